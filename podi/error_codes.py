"""Error codes shared by every app. Each app keeps its own in its ``error_codes.py``.

``ErrorCode`` lives here, at the bottom, so that ``podi.errors`` (which raises and renders these
codes) can import this module and not the other way round.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    message: str

    def __str__(self) -> str:
        return self.code


VALIDATION_ERROR = ErrorCode("VALIDATION_ERROR", 400, "The request is not valid.")
INVALID_JSON = ErrorCode("INVALID_JSON", 400, "The request body is not valid JSON.")
AUTH_REQUIRED = ErrorCode("AUTH_REQUIRED", 401, "Authentication is required.")
AUTH_INVALID = ErrorCode("AUTH_INVALID", 401, "The credentials are not valid.")
INVALID_CREDENTIALS = ErrorCode("INVALID_CREDENTIALS", 401, "Wrong username or password.")
USER_INACTIVE = ErrorCode("USER_INACTIVE", 403, "This user is inactive.")
REGISTRATION_CLOSED = ErrorCode("REGISTRATION_CLOSED", 403, "Registration is closed.")
FORBIDDEN = ErrorCode("FORBIDDEN", 403, "You are not allowed to do this.")
NOT_FOUND = ErrorCode("NOT_FOUND", 404, "Not found.")
USER_NOT_FOUND = ErrorCode("USER_NOT_FOUND", 404, "No such user.")
METHOD_NOT_ALLOWED = ErrorCode("METHOD_NOT_ALLOWED", 405, "Method not allowed.")
NOT_ACCEPTABLE = ErrorCode("NOT_ACCEPTABLE", 406, "Cannot produce an acceptable response.")
CONFLICT = ErrorCode("CONFLICT", 409, "Conflict.")
RESOURCE_IN_USE = ErrorCode("RESOURCE_IN_USE", 409, "It is still referenced; remove those first.")
IDEMPOTENCY_KEY_REUSED = ErrorCode(
    "IDEMPOTENCY_KEY_REUSED", 409, "This Idempotency-Key was used with another request body."
)
IDEMPOTENCY_IN_PROGRESS = ErrorCode(
    "IDEMPOTENCY_IN_PROGRESS", 409, "A request with this Idempotency-Key is still in progress."
)
PAYLOAD_TOO_LARGE = ErrorCode("PAYLOAD_TOO_LARGE", 413, "The request body is too large.")
UNSUPPORTED_MEDIA_TYPE = ErrorCode("UNSUPPORTED_MEDIA_TYPE", 415, "Unsupported media type.")
RATE_LIMITED = ErrorCode("RATE_LIMITED", 429, "Too many requests.")
INTERNAL_ERROR = ErrorCode(
    "INTERNAL_ERROR", 500, "Internal error. Quote the request id to support."
)
SERVICE_UNAVAILABLE = ErrorCode("SERVICE_UNAVAILABLE", 503, "Service unavailable.")
DATABASE_UNAVAILABLE = ErrorCode(
    "DATABASE_UNAVAILABLE", 503, "The database is not reachable right now; retry in a few seconds."
)
# Every pooled connection is busy past DATABASE_POOL_TIMEOUT, or PostgreSQL refused a connection
# at max_connections ("too many clients"): overload, not an outage.
DATABASE_BUSY = ErrorCode(
    "DATABASE_BUSY", 503, "The server is at its database connection limit; retry in a moment."
)
