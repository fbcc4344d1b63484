"""Error codes of the wallet (``/api/wallet/v1`` and the wallet services)."""

from podi.error_codes import VALIDATION_ERROR  # noqa: F401  (re-exported: the wallet raises it too)
from podi.errors import ErrorCode

WALLET_INSUFFICIENT = ErrorCode("WALLET_INSUFFICIENT", 402, "Not enough points.")
WALLET_HOLD_CONFLICT = ErrorCode(
    "WALLET_HOLD_CONFLICT", 409, "A hold for this task already exists with other points."
)
WALLET_HOLD_SETTLED = ErrorCode("WALLET_HOLD_SETTLED", 409, "This hold is already settled.")
WALLET_HOLD_EXPIRED = ErrorCode("WALLET_HOLD_EXPIRED", 409, "This hold has expired.")
WALLET_HOLD_NOT_FOUND = ErrorCode("WALLET_HOLD_NOT_FOUND", 404, "No such hold.")
WALLET_GRANT_CONFLICT = ErrorCode(
    "WALLET_GRANT_CONFLICT", 409, "This reference was already used for a grant of other points."
)
WALLET_TASK_NOT_FOUND = ErrorCode(
    "WALLET_TASK_NOT_FOUND", 404, "No such task of this user: a hold may name only its own task."
)
