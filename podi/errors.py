"""The error envelope ``{code, message, details}`` and the one exception handler that renders it.

Services raise ``AppError(SOME_CODE, …)``; views never build error responses by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import DEFAULT_DB_ALIAS, DataError, InterfaceError, OperationalError, connections
from django.http import Http404, JsonResponse
from psycopg.errors import TooManyConnections
from psycopg_pool import PoolTimeout
from redis import exceptions as redis_errors
from rest_framework import exceptions as drf
from rest_framework.response import Response

from podi import error_codes as codes
from podi.error_codes import VALIDATION_ERROR, ErrorCode
from podi.logging import current_request_id

logger = logging.getLogger("podi.errors")


class AppError(Exception):
    """An application error with a stable code; rendered as the error envelope."""

    def __init__(
        self,
        error: ErrorCode,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.error = error
        self.code = error.code
        self.status = error.status
        self.message = message or error.message
        self.details = details or {}
        self.headers = headers or {}
        super().__init__(f"{self.code}: {self.message}")


def validation_error(fields: dict[str, list[str] | str], message: str | None = None) -> AppError:
    normalised = {k: v if isinstance(v, list) else [v] for k, v in fields.items()}
    first = next(iter(normalised.items()), None)
    text = message or (f"{first[0]}: {first[1][0]}" if first else VALIDATION_ERROR.message)
    return AppError(VALIDATION_ERROR, text, details={"fields": normalised})


def envelope(code: str, message: str, details: dict | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details or {}}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error detail into ``{"a.b": ["msg"]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else "nonFieldErrors"
            path = f"{prefix}.{name}" if prefix else str(name)
            out.update(_flatten(value, path))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix or "nonFieldErrors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten(item, f"{prefix}[{index}]" if prefix else f"[{index}]"))
    else:
        out[prefix or "nonFieldErrors"] = [str(detail)]
    return out


def _from_drf(exc: drf.APIException) -> AppError:
    if isinstance(exc, drf.ValidationError):
        return validation_error(_flatten(exc.detail))
    if isinstance(exc, drf.NotAuthenticated):
        return AppError(codes.AUTH_REQUIRED)
    if isinstance(exc, drf.AuthenticationFailed):
        return AppError(codes.AUTH_INVALID, str(exc.detail))
    if isinstance(exc, drf.PermissionDenied):
        return AppError(codes.FORBIDDEN)
    if isinstance(exc, drf.NotFound):
        return AppError(codes.NOT_FOUND)
    if isinstance(exc, drf.MethodNotAllowed):
        return AppError(codes.METHOD_NOT_ALLOWED, str(exc.detail))
    if isinstance(exc, drf.NotAcceptable):
        return AppError(codes.NOT_ACCEPTABLE)
    if isinstance(exc, drf.UnsupportedMediaType):
        return AppError(codes.UNSUPPORTED_MEDIA_TYPE, str(exc.detail))
    if isinstance(exc, drf.ParseError):
        return AppError(codes.INVALID_JSON, str(exc.detail))
    if isinstance(exc, drf.Throttled):
        wait = int(exc.wait or 1)
        return AppError(
            codes.RATE_LIMITED,
            f"Too many requests; retry in {wait} s.",
            details={"retryAfter": wait},
            headers={"Retry-After": str(wait)},
        )
    return AppError(
        codes.ErrorCode(str(exc.default_code).upper(), exc.status_code, str(exc.detail))
    )


def _bad_value(exc: Exception) -> AppError | None:
    """Input the database cannot hold, found only when a query runs: a 400, not a 500.

    A number beyond the column's range (``DataError`` on PostgreSQL, ``OverflowError`` on
    SQLite and in date arithmetic) or a NUL character in text (refused by psycopg).
    """

    if isinstance(exc, DataError | OverflowError) or (
        isinstance(exc, ValueError) and "NUL (0x00)" in str(exc)
    ):
        logger.warning("bad value reached the database: %s", exc)
        return AppError(
            codes.VALIDATION_ERROR,
            "A value is out of range or holds a character that cannot be stored.",
        )
    return None


# How PostgreSQL words a connection refused at a limit (connect errors carry no SQLSTATE):
# max_connections, a database's or a role's CONNECTION LIMIT, the reserved superuser slots.
_REFUSED_AT_LIMIT = ("too many clients", "too many connections", "remaining connection slots")


def _refused_at_limit(exc: BaseException) -> bool:
    return isinstance(exc, TooManyConnections) or (
        isinstance(exc, OperationalError | psycopg.OperationalError)
        and any(text in str(exc) for text in _REFUSED_AT_LIMIT)
    )


def database_busy(exc: BaseException) -> bool:
    """True for connection overload, False for an outage. Django wraps psycopg's errors: the
    chain is searched.

    Overload: PostgreSQL refused a connection at its limit ("too many clients"; connect errors
    carry no SQLSTATE, so the message is matched), or the pool timed out with every one of its
    connections lent out while the server answers. The pool also times out while the server is
    down or restarting — it keeps reconnecting in the background, its connections not all there —
    so a ``PoolTimeout`` is judged by the pool's size and one direct connection attempt."""
    seen = 0
    while exc is not None and seen < 5:
        if _refused_at_limit(exc):
            return True
        if isinstance(exc, PoolTimeout):
            server = _server_state()
            return server == "limit" or (server == "up" and _pool_full())
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _pool_full() -> bool:
    pool = getattr(connections[DEFAULT_DB_ALIAS], "pool", None)
    if pool is None:
        return False
    stats = pool.get_stats()
    return stats.get("pool_size", 0) >= stats.get("pool_max", 1)


_probe_lock = threading.Lock()
_probe: tuple[float, str] = (-1.0, "")  # (monotonic time, state): one probe per second
PROBE_CONNECT_TIMEOUT = 2


def _server_state() -> str:
    """``up``, ``limit`` (refuses at a connection limit) or ``down``, by one direct attempt."""
    global _probe
    with _probe_lock:
        checked_at, state = _probe
        if checked_at >= 0 and time.monotonic() - checked_at < 1.0:
            return state
        params = connections[DEFAULT_DB_ALIAS].get_connection_params()
        params["connect_timeout"] = PROBE_CONNECT_TIMEOUT
        try:
            psycopg.connect(**params).close()
        except psycopg.Error as error:
            state = "limit" if _refused_at_limit(error) else "down"
        else:
            state = "up"
        _probe = (time.monotonic(), state)
        return state


def to_app_error(exc: Exception) -> AppError | None:
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, RequestDataTooBig):
        return too_large()
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return AppError(codes.VALIDATION_ERROR, str(exc))
    if isinstance(exc, drf.APIException):
        return _from_drf(exc)
    if isinstance(exc, Http404):
        return AppError(codes.NOT_FOUND)
    if isinstance(exc, DjangoPermissionDenied):
        return AppError(codes.FORBIDDEN)
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        if database_busy(exc):
            # Overload: the pool stayed empty past its timeout, or the server is at
            # max_connections. Shed the request; the client retries.
            logger.warning("database busy: %s", exc)
            return AppError(codes.DATABASE_BUSY, headers={"Retry-After": "1"})
        # The database restarting or unreachable: a temporary condition, not a bug.
        logger.warning("database unavailable: %s", exc)
        return AppError(codes.DATABASE_UNAVAILABLE, headers={"Retry-After": "2"})
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        # Redis (cache and rate limits, channel layer, broker) restarting or unreachable.
        logger.warning("redis unavailable: %s", exc)
        return AppError(codes.SERVICE_UNAVAILABLE, headers={"Retry-After": "2"})
    return _bad_value(exc)


def exception_handler(exc: Exception, context: dict) -> Response:
    error = to_app_error(exc)
    if error is None:
        view = context.get("view")
        logger.exception(
            "unhandled error in %s", type(view).__name__ if view else "view", exc_info=exc
        )
        error = AppError(codes.INTERNAL_ERROR, details={"requestId": current_request_id()})
    response = Response(envelope(error.code, error.message, error.details), status=error.status)
    for key, value in error.headers.items():
        response[key] = value
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def json_error(error: ErrorCode, message: str | None = None, details: dict | None = None):
    return JsonResponse(
        envelope(error.code, message or error.message, details), status=error.status
    )


def too_large() -> AppError:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return AppError(
        codes.PAYLOAD_TOO_LARGE,
        f"The request body is larger than {limit} bytes.",
        details={"maxBytes": limit},
    )
