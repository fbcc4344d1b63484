"""Writes of the agent protocol, one module per concern (import from the module itself):

- ``agents``: register, change and delete agents;
- ``tokens``: mint and revoke their tokens, task-scoped tokens;
- ``alerts``: alerts from agents and from PODI, acknowledgement;
- ``liveness``: heartbeats, offline detection, the executor health gate;
- ``manifests``: manifests and their versions;
- ``agent_tasks``: create agent tasks and push them (claims, retries, back-off);
- ``agent_task_reports``: what the agent reports back (events, completion, failure) and expiry.

Times: every service that decides on time takes ``now=`` (default: the current time), so tests
drive liveness and expiry without waiting.
"""
