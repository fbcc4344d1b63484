"""Secrets at rest: Fernet with a key from ``SECRETS_ENCRYPTION_KEY`` (or derived from SECRET_KEY)."""

from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@functools.cache
def _fernet(configured: str | None, secret_key: str) -> Fernet:
    if configured:
        try:
            return Fernet(configured.encode())
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                "SECRETS_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64 bytes)"
            ) from None
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"podi-secrets-at-rest", info=b"fernet"
    ).derive(secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def fernet() -> Fernet:
    return _fernet(settings.SECRETS_ENCRYPTION_KEY, settings.SECRET_KEY)


def encrypt_secret(plain: str) -> str:
    return fernet().encrypt(plain.encode()).decode()


def decrypt_secret(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted: SECRETS_ENCRYPTION_KEY or SECRET_KEY changed"
        ) from None


def mask_secret(plain: str, *, keep: int = 4) -> str:
    if not plain:
        return ""
    head = plain[:4] if len(plain) > 12 else ""
    tail = plain[-keep:] if len(plain) > 2 * keep else ""
    return f"{head}…{tail}"
