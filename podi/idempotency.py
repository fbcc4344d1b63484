"""``Idempotency-Key`` for POST endpoints that create things.

Decorate the view's ``post``. A replay with the same principal, route, key and body returns the
stored response (with ``Idempotent-Replayed: true``); the same key with another body is 409
``IDEMPOTENCY_KEY_REUSED``; a replay while the first call is still running is 409
``IDEMPOTENCY_IN_PROGRESS``. Only successful (2xx) responses are stored: an error releases the key
so the client may retry after fixing the cause. Records expire after ``IDEMPOTENCY_TTL``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.response import Response

from podi import error_codes as codes
from podi.auth import principal_label
from podi.errors import AppError, validation_error
from podi.models import IdempotencyRecord

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# A record still marked in progress after this long belongs to a request that died.
STALE_AFTER = timedelta(minutes=2)

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    name=HEADER,
    type=OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description="Makes the call safe to retry: a replay with the same body returns the first response.",
)


def _body_hash(request) -> str:
    try:
        canonical = json.dumps(request.data, sort_keys=True, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        canonical = repr(request.data)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _claim(principal: str, route: str, key: str, body_hash: str) -> IdempotencyRecord | None:
    """Claim the key; return the existing completed record to replay, or None when claimed."""
    now = timezone.now()
    expired_before = now - timedelta(seconds=settings.IDEMPOTENCY_TTL)
    for _ in range(3):
        with transaction.atomic():
            record = (
                IdempotencyRecord.objects.select_for_update()
                .filter(principal=principal, route=route, key=key)
                .first()
            )
            if record is not None and record.created_at < expired_before:
                record.delete()
                record = None
            if record is None:
                try:
                    with transaction.atomic():
                        IdempotencyRecord.objects.create(
                            principal=principal, route=route, key=key, body_hash=body_hash
                        )
                    return None
                except IntegrityError:
                    continue
            if record.body_hash != body_hash:
                raise AppError(codes.IDEMPOTENCY_KEY_REUSED)
            if record.completed:
                return record
            if record.created_at < now - STALE_AFTER:
                record.created_at = now
                record.save(update_fields=["created_at"])
                return None
            raise AppError(codes.IDEMPOTENCY_IN_PROGRESS)
    raise AppError(codes.IDEMPOTENCY_IN_PROGRESS)


def idempotent(method):
    @functools.wraps(method)
    def wrapper(view, request, *args, **kwargs):
        key = request.headers.get(HEADER)
        if not key:
            return method(view, request, *args, **kwargs)
        if len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise validation_error({HEADER: [f"At most {MAX_KEY_LENGTH} printable characters."]})
        principal = principal_label(request)
        route = request.path
        body_hash = _body_hash(request)
        stored = _claim(principal, route, key, body_hash)
        if stored is not None:
            response = Response(stored.response, status=stored.status_code)
            response["Idempotent-Replayed"] = "true"
            return response
        lookup = IdempotencyRecord.objects.filter(principal=principal, route=route, key=key)
        try:
            # The work and its record commit together: a process that dies after the commit
            # leaves a completed record (a retry replays the answer), one that dies before it
            # leaves no work (a retry after STALE_AFTER runs it once). Never both, never twice.
            with transaction.atomic():
                response = method(view, request, *args, **kwargs)
                if 200 <= response.status_code < 300:
                    lookup.update(
                        completed=True, status_code=response.status_code, response=response.data
                    )
        except BaseException:
            lookup.filter(completed=False).delete()
            raise
        if not 200 <= response.status_code < 300:
            lookup.filter(completed=False).delete()
        return response

    return wrapper


def purge_expired_idempotency_records() -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_TTL)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
