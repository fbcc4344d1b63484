"""Signed, expiring tokens: user upload keys and the local backend's PUT/GET URLs.

All are HMAC-SHA256 signatures (``django.core.signing``) under ``UPLOAD_TOKEN_SECRET`` (derived
from ``SECRET_KEY`` when unset), each kind with its own salt so one can never pass for another.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from django.conf import settings
from django.core import signing

UPLOAD_KEY_PREFIX = "upk_"
_UPLOAD_KEY_SALT = "podi.media.upload-key"
_LOCAL_PUT_SALT = "podi.media.local-put"
_LOCAL_GET_SALT = "podi.media.local-get"
MAX_TOKEN_LENGTH = 4096


class TokenInvalid(Exception):
    """The token is malformed, forged or expired (the message says which, for logs only)."""


def _secret() -> str:
    if settings.UPLOAD_TOKEN_SECRET:
        return settings.UPLOAD_TOKEN_SECRET
    return hmac.new(
        settings.SECRET_KEY.encode(), b"podi.media.upload-token", hashlib.sha256
    ).hexdigest()


def _dumps(payload: dict, salt: str) -> str:
    return signing.dumps(payload, key=_secret(), salt=salt, compress=False)


def _loads(token: str, salt: str) -> dict:
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid("malformed")
    try:
        payload = signing.loads(token, key=_secret(), salt=salt)
    except signing.BadSignature:
        raise TokenInvalid("bad signature") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("e"), int):
        raise TokenInvalid("malformed payload")
    if payload["e"] <= int(time.time()):
        raise TokenInvalid("expired")
    return payload


# --- Upload keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadKeyClaims:
    user_id: int
    version: int
    expires_at: int


def upload_key_issue(*, user_id: int, version: int, ttl: int) -> tuple[str, int]:
    expires = int(time.time()) + ttl
    token = _dumps({"u": user_id, "v": version, "e": expires}, _UPLOAD_KEY_SALT)
    return UPLOAD_KEY_PREFIX + token, expires


def upload_key_read(raw: str) -> UploadKeyClaims:
    if not isinstance(raw, str) or not raw.startswith(UPLOAD_KEY_PREFIX):
        raise TokenInvalid("malformed")
    payload = _loads(raw[len(UPLOAD_KEY_PREFIX) :], _UPLOAD_KEY_SALT)
    if not isinstance(payload.get("u"), int) or not isinstance(payload.get("v"), int):
        raise TokenInvalid("malformed payload")
    return UploadKeyClaims(user_id=payload["u"], version=payload["v"], expires_at=payload["e"])


# --- Local backend URLs ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalPut:
    object_key: str
    size: int
    mime_type: str
    expires_at: int


def local_put_token(*, object_key: str, size: int, mime_type: str, ttl: int) -> tuple[str, int]:
    expires = int(time.time()) + ttl
    payload = {"k": object_key, "s": size, "t": mime_type, "e": expires}
    return _dumps(payload, _LOCAL_PUT_SALT), expires


def local_put_read(token: str) -> LocalPut:
    payload = _loads(token, _LOCAL_PUT_SALT)
    return LocalPut(
        object_key=str(payload.get("k", "")),
        size=int(payload.get("s", -1)),
        mime_type=str(payload.get("t", "")),
        expires_at=payload["e"],
    )


def local_get_token(*, object_key: str, ttl: int) -> tuple[str, int]:
    expires = int(time.time()) + ttl
    return _dumps({"k": object_key, "e": expires}, _LOCAL_GET_SALT), expires


def local_get_read(token: str) -> str:
    return str(_loads(token, _LOCAL_GET_SALT).get("k", ""))
