"""Error codes of the integrations app (admin API, catalog, workflows)."""

from podi.errors import ErrorCode

EXECUTOR_NOT_FOUND = ErrorCode("EXECUTOR_NOT_FOUND", 404, "No such executor.")
WORKFLOW_NOT_FOUND = ErrorCode("WORKFLOW_NOT_FOUND", 404, "No such workflow.")
WORKFLOW_VERSION_NOT_FOUND = ErrorCode(
    "WORKFLOW_VERSION_NOT_FOUND", 404, "No such version of this workflow."
)
BINDING_NOT_FOUND = ErrorCode("BINDING_NOT_FOUND", 404, "No such workflow binding.")
API_KEY_NOT_FOUND = ErrorCode("API_KEY_NOT_FOUND", 404, "No such API key.")
ABILITY_NOT_FOUND = ErrorCode("ABILITY_NOT_FOUND", 404, "No such ability.")
PRESET_NOT_FOUND = ErrorCode("PRESET_NOT_FOUND", 404, "No such preset.")
INVALID_WORKFLOW_OR_EXECUTOR = ErrorCode(
    "INVALID_WORKFLOW_OR_EXECUTOR",
    400,
    "The workflow, its version and the executor do not fit together.",
)
WORKFLOW_INVALID = ErrorCode("WORKFLOW_INVALID", 400, "The workflow definition is not valid.")
RESOURCE_IN_USE = ErrorCode("RESOURCE_IN_USE", 409, "It is still referenced; remove those first.")
PRESET_IS_BASE = ErrorCode(
    "PRESET_IS_BASE", 409, "The base preset of an ability cannot be deleted."
)

# --- GPU-server agents (``/api/agent/v1``, ``/api/admin/agents…``) ---------------------------
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
