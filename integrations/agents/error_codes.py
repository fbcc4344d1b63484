"""Error codes of GPU-server agents (``/api/agent/v1``, ``/api/admin/agents…``,
``/api/admin/manifests…``)."""

from podi.errors import ErrorCode

AGENT_TOKEN_REQUIRED = ErrorCode(
    "AGENT_TOKEN_REQUIRED", 401, "Send an agent token: 'Authorization: Bearer <token>'."
)
AGENT_TOKEN_INVALID = ErrorCode("AGENT_TOKEN_INVALID", 401, "The agent token is not valid.")
AGENT_TOKEN_EXPIRED = ErrorCode("AGENT_TOKEN_EXPIRED", 401, "The agent token has expired.")
AGENT_TOKEN_KID_INVALID = ErrorCode(
    "AGENT_TOKEN_KID_INVALID", 401, "The token's key id (kid) is missing or not configured."
)
AGENT_TOKEN_SCOPE_INVALID = ErrorCode(
    "AGENT_TOKEN_SCOPE_INVALID", 403, "The token's scope does not allow this call."
)
AGENT_NOT_ALLOWED = ErrorCode(
    "AGENT_NOT_ALLOWED", 403, "This agent is disabled, or the token belongs to another agent."
)
AGENT_TASK_FORBIDDEN = ErrorCode(
    "AGENT_TASK_FORBIDDEN", 403, "The token is not for this task (or this task's manifest)."
)
AGENT_TASK_EXPIRED = ErrorCode("AGENT_TASK_EXPIRED", 410, "The agent task has expired.")
AGENT_TASK_FINISHED = ErrorCode("AGENT_TASK_FINISHED", 409, "The agent task has already finished.")
AGENT_NOT_FOUND = ErrorCode("AGENT_NOT_FOUND", 404, "No such agent.")
AGENT_TASK_NOT_FOUND = ErrorCode("AGENT_TASK_NOT_FOUND", 404, "No such agent task.")
MANIFEST_NOT_FOUND = ErrorCode("MANIFEST_NOT_FOUND", 404, "No such manifest.")
AGENT_DISABLED = ErrorCode("AGENT_DISABLED", 409, "The agent is disabled; enable it first.")
AGENT_SIGNING_UNCONFIGURED = ErrorCode(
    "AGENT_SIGNING_UNCONFIGURED", 503, "AGENT_JWT_SECRETS is not set: agent tokens are off."
)
