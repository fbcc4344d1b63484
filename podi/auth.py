"""Who is calling, and for whom they act.

``Authorization: Bearer <token>`` carries either a user access JWT (from ``/api/auth/v1/login``)
or a service key ``psk_…``. For a JWT ``request.auth`` is the validated token; for a service key it
is the ``ServiceKey`` row and ``request.user`` is the account the key acts as.

Access tokens are short-lived JWTs, checked without the database except for the user's row, plus
a deny list in the cache (``access_tokens_revoke``): logout revokes the presented access token
and every access token of the user issued in an earlier second, for one access-token lifetime.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from podi import error_codes as codes
from podi.access import READ, WRITE, Principal
from podi.common import RowReader
from podi.errors import AppError, validation_error
from podi.models import SERVICE_KEY_PREFIX, ServiceKey, hash_service_key

_LAST_USED_RESOLUTION = timedelta(minutes=1)


def _revoked_before_key(user_id) -> str:
    return f"podi:auth:revoked-before:{user_id}"


def _revoked_jti_key(jti: str) -> str:
    return f"podi:auth:revoked-jti:{jti}"


def access_tokens_revoke(*, user_id: int, jti: str | None = None, now: float | None = None) -> None:
    """Refuse ``jti`` and every access token of ``user_id`` issued before the current second.

    Kept for one access-token lifetime (``JWT_ACCESS_TTL``): older tokens have expired anyway.
    Tokens issued later in the same second stay valid, so a fresh login right after works.
    """

    ttl = settings.JWT_ACCESS_TTL + 5
    cutoff = int(now if now is not None else time.time())
    key = _revoked_before_key(user_id)
    if (cache.get(key) or 0) < cutoff:
        cache.set(key, cutoff, ttl)
    if jti:
        cache.set(_revoked_jti_key(jti), 1, ttl)


def access_token_revoked(payload: Mapping) -> bool:
    """True when a (signature-checked) access token's claims were revoked by logout.

    For long-lived connections (the WebSocket stream) to call in their periodic check, with the
    claims they authenticated with; user deactivation is the separate ``is_active`` check.
    """
    jti = payload.get("jti")
    keys = [_revoked_before_key(payload.get("user_id"))]
    if jti:
        keys.append(_revoked_jti_key(str(jti)))
    found = cache.get_many(keys)
    if jti and found.get(_revoked_jti_key(str(jti))):
        return True
    cutoff = found.get(keys[0])
    try:
        return cutoff is not None and int(payload.get("iat", 0)) < int(cutoff)
    except (TypeError, ValueError):
        return True


def user_from_access_token(raw: str):
    """Validate a user access JWT and return its active user, or raise ``AUTH_INVALID``."""
    try:
        token = AccessToken(raw)
    except TokenError as exc:
        raise AppError(codes.AUTH_INVALID, f"Access token rejected: {exc}") from None
    if access_token_revoked(token.payload):
        raise AppError(codes.AUTH_INVALID, "Access token revoked (logged out).")
    user = _users().get(token.get("user_id"))
    if user is None:
        raise AppError(codes.AUTH_INVALID, "Access token names no user.")
    if not user.is_active:
        raise AppError(codes.AUTH_INVALID, "This user is inactive.")
    return user, token


@functools.cache
def _users() -> RowReader:
    model = get_user_model()
    return RowReader(model, model._meta.pk.name)


_SERVICE_KEYS = RowReader(ServiceKey, "key_hash")


def service_key_from_raw(raw: str) -> ServiceKey:
    key = _SERVICE_KEYS.get(hash_service_key(raw))
    user = _users().get(key.user_id) if key is not None and key.is_active else None
    if user is None or not user.is_active:
        raise AppError(codes.AUTH_INVALID, "Service key rejected.")
    key.user = user
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
        ServiceKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def principal_from_token(raw: str):
    """(user, auth) for a raw bearer token of either kind; used by HTTP and WebSocket alike."""
    if raw.startswith(SERVICE_KEY_PREFIX):
        key = service_key_from_raw(raw)
        return key.user, key
    return user_from_access_token(raw)


class BearerAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != b"bearer" or len(header) != 2:
            raise AppError(codes.AUTH_INVALID, "Use 'Authorization: Bearer <token>'.")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise AppError(codes.AUTH_INVALID, "Malformed token.") from None
        return principal_from_token(raw)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


# --- Principals ------------------------------------------------------------------------------


def service_key_of(request) -> ServiceKey | None:
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ServiceKey) else None


def principal_of(request) -> Principal:
    """The request's principal (built once, then kept on the request); docs/architecture.md §5."""
    principal = getattr(request, "_podi_principal", None)
    if principal is None:
        key = service_key_of(request)
        principal = Principal.for_key(key) if key else Principal.for_user(request.user)
        request._podi_principal = principal
    return principal


def is_staff_principal(request) -> bool:
    """Staff users, and service-account keys with the ``admin`` scope (not user-bound keys)."""
    user = getattr(request, "user", None)
    if not (user and user.is_authenticated and user.is_active):
        return False
    return principal_of(request).is_operator


def principal_label(request) -> str:
    key = service_key_of(request)
    return f"key:{key.pk}" if key else f"user:{request.user.pk}"


def _area_and_level(request, area: str | None) -> tuple[str, str]:
    """The area (given, else the view's ``scope_area``, else ``admin``) and level (read for safe
    methods) of this request."""
    if area is None:
        view = (getattr(request, "parser_context", None) or {}).get("view")
        area = getattr(view, "scope_area", None) or "admin"
    return area, READ if request.method in SAFE_METHODS else WRITE


def acting_user(request, user_id: int | str | None, *, area: str | None = None):
    """The user this request acts for (``userId`` in the body or query).

    Self when ``user_id`` is empty or the caller's own id. Another user only when the access rule
    lets the principal act for anyone in ``area`` (default: the view's ``scope_area``) (staff; a service-account key with the
    area's scope, which ``ScopePermission`` has checked); else 403 ``FORBIDDEN``. A user, and a
    key created for a user, act only for that user.
    """
    if user_id in (None, ""):
        return request.user
    try:
        user_id = int(user_id)
    except (TypeError, ValueError):
        raise validation_error({"userId": ["A valid integer is required."]}) from None
    if user_id == request.user.pk:
        return request.user
    if not principal_of(request).acts_for_anyone(*_area_and_level(request, area)):
        raise AppError(codes.FORBIDDEN, "You may act only for yourself.")
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        raise AppError(codes.USER_NOT_FOUND)
    return user


class ScopePermission(BasePermission):
    """Service keys need ``<view.scope_area>:read`` for safe methods and ``:write`` otherwise.

    Views without a ``scope_area`` are open to any authenticated principal (e.g. ``me``).
    """

    def has_permission(self, request, view) -> bool:
        key = service_key_of(request)
        area = getattr(view, "scope_area", None)
        if key is None or area is None:
            return True
        level = READ if request.method in SAFE_METHODS else WRITE
        return key.has_scope(f"{area}:{level}")


class IsStaffPrincipal(BasePermission):
    def has_permission(self, request, view) -> bool:
        return is_staff_principal(request)
