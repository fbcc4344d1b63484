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
PRESET_IS_BASE = ErrorCode(
    "PRESET_IS_BASE", 409, "The base preset of an ability cannot be deleted."
)
