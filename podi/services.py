"""Writes owned by the platform app: service keys and leases."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from podi.errors import validation_error
from podi.models import SCOPES, ServiceKey, hash_service_key, is_service_account


def _clean_scopes(scopes: list[str]) -> list[str]:
    cleaned = sorted({scope.strip() for scope in scopes if scope.strip()})
    unknown = [scope for scope in cleaned if scope not in SCOPES]
    if unknown:
        raise validation_error(
            {"scopes": [f"Unknown scope(s): {', '.join(unknown)}. Known: {', '.join(SCOPES)}."]}
        )
    return cleaned


def service_key_create(
    *, name: str, scopes: list[str], user=None, created_by=None, expires_at=None
) -> tuple[ServiceKey, str]:
    """Create a key and return ``(row, raw_key)``; the raw key is never stored or shown again.

    Without ``user`` the key acts as a dedicated service account ``svc-<name>`` and may act for
    any user in the areas of its scopes. With a real ``user`` it is *user-bound*: it acts only
    for that user (``ServiceKey.user_bound``; README, "Who may see what").
    """
    name = name.strip()
    if not name:
        raise validation_error({"name": ["Required."]})
    scopes = _clean_scopes(scopes)
    raw = ServiceKey.generate_raw()
    with transaction.atomic():
        if user is None:
            User = get_user_model()
            user, created = User.objects.get_or_create(username=f"svc-{name}"[:150])
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            elif not is_service_account(user):
                # A person registered this name: never let a service key act as (and for) them.
                raise validation_error(
                    {"name": [f"{user.username!r} is a person's account; choose another name."]}
                )
        key = ServiceKey.objects.create(
            name=name,
            prefix=raw[:12],
            key_hash=hash_service_key(raw),
            scopes=scopes,
            user=user,
            user_bound=not is_service_account(user),
            created_by=created_by,
            expires_at=expires_at,
        )
    return key, raw


def service_key_revoke(*, key: ServiceKey) -> ServiceKey:
    ServiceKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()
    return key


def lease_acquire(*, name: str, holder: str, ttl: float) -> bool:
    """Take (or extend) the named lease for ``ttl`` seconds; False when someone else holds it."""
    from podi.models import Lease

    now = timezone.now()
    expires = now + timedelta(seconds=ttl)
    Lease.objects.get_or_create(name=name, defaults={"holder": "", "expires_at": None})
    taken = Lease.objects.filter(
        Q(holder=holder) | Q(expires_at__lt=now) | Q(expires_at__isnull=True), name=name
    ).update(holder=holder, expires_at=expires)
    return taken == 1


def lease_release(*, name: str, holder: str) -> None:
    from podi.models import Lease

    Lease.objects.filter(name=name, holder=holder).update(holder="", expires_at=None)


def service_key_rotate_webhook_secret(*, key: ServiceKey) -> str:
    """Give ``key`` a new callback signing secret and return it (``whsec_…``), shown once.

    Callbacks of tasks the key submitted are signed with it from the next attempt on; until the
    first rotation they are signed with the global ``WEBHOOK_SECRET``.
    """
    import base64
    import secrets

    from podi.crypto import encrypt_secret

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    ServiceKey.objects.filter(pk=key.pk).update(webhook_secret_encrypted=encrypt_secret(secret))
    key.refresh_from_db(fields=["webhook_secret_encrypted"])
    return secret
