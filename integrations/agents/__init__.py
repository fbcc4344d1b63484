"""GPU-server agents (DESIGN §5 "Agents"): a sidecar on each ComfyUI server that heartbeats,
fetches its resource manifest and reports the sync tasks PODI pushes to it.

Modules: ``tokens`` (JWTs with a ``kid``), ``manifests`` (validation of manifest content),
``services`` (every write: agents, tokens, heartbeats, liveness, alerts, manifests, agent tasks and
their push), ``selectors`` (fetch-or-404 and token-bound reads), ``push`` (the outbound HTTP call),
``apis`` (``/api/agent/v1/…`` and ``/api/admin/agents…``, ``/api/admin/manifests…``), ``actors``
(reconciler steps: offline detection, push retries, expiry) and ``admin`` (the console pages).
"""
