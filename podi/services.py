"""Writes owned by the platform app: service keys, leases and the first admin user."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from podi.common import model_delete, model_update
from podi.crypto import encrypt_secret
from podi.errors import validation_error
from podi.models import SCOPES, Lease, ServiceKey, hash_service_key, is_service_account


def user_identity_errors(*, username: str | None, email: str | None, user_id=None) -> dict:
    """Field errors for a username or email another account (not ``user_id``) could be
    confused with. Usernames may not contain "@" (so none looks like an email) and an email
    belongs to one account, case-insensitively (a unique index backs it)."""
    User = get_user_model()
    others = User.objects.exclude(pk=user_id) if user_id is not None else User.objects.all()
    errors: dict[str, list[str]] = {}
    if username is not None:
        if "@" in username:
            errors["username"] = ['A username may not contain "@" (log in by email instead).']
        elif others.filter(username__iexact=username).exists():
            errors["username"] = ["This username is taken."]
    if email and others.filter(email__iexact=email).exists():
        errors["email"] = ["This email belongs to another account."]
    return errors


# --- New users: what other apps set up for them (their wallet account) -----------------------

UserSetup = Callable[..., None]
_user_setups: list[UserSetup] = []


def register_user_setup(setup: UserSetup) -> None:
    """Called from an app's ``AppConfig.ready()``: ``setup(user=...)`` runs, in the creating
    transaction, for every user created through ``user_create`` or the console (``wallet``
    registers the account, so a new user has one at once)."""
    if setup not in _user_setups:
        _user_setups.append(setup)


def user_setup(*, user) -> None:
    """Run the registered set-ups for a user just created (idempotent ones only)."""
    for setup in _user_setups:
        setup(user=user)


def user_create(*, username: str, email: str = "", password: str | None = None, **extra):
    """Create a user and everything a user has from the start (their wallet account).
    Raises ``IntegrityError`` when the username or email was taken concurrently."""
    User = get_user_model()
    with transaction.atomic():
        user = User.objects.create_user(username=username, email=email, password=password, **extra)
        user_setup(user=user)
    return user


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


def service_key_update(*, key: ServiceKey, **changes) -> ServiceKey:
    """Rename a key, change its scopes, user or expiry (never its secret: create a new key)."""
    if "name" in changes:
        changes["name"] = str(changes["name"] or "").strip()
        if not changes["name"]:
            raise validation_error({"name": ["Required."]})
    if "scopes" in changes:
        changes["scopes"] = _clean_scopes(changes["scopes"])
    key, _ = model_update(
        instance=key, fields=["name", "scopes", "user", "expires_at"], data=changes
    )
    return key


def service_key_revoke(*, key: ServiceKey) -> ServiceKey:
    ServiceKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()
    return key


def service_key_delete(*, key: ServiceKey) -> None:
    """Delete a key row (409 while tasks or deliveries still refer to it); revoking keeps it."""
    model_delete(instance=key, what="service key")


def lease_acquire(*, name: str, holder: str, ttl: float) -> bool:
    """Take (or extend) the named lease for ``ttl`` seconds; False when someone else holds it."""

    now = timezone.now()
    expires = now + timedelta(seconds=ttl)
    Lease.objects.get_or_create(name=name, defaults={"holder": "", "expires_at": None})
    taken = Lease.objects.filter(
        Q(holder=holder) | Q(expires_at__lt=now) | Q(expires_at__isnull=True), name=name
    ).update(holder=holder, expires_at=expires)
    return taken == 1


def lease_renew(*, name: str, holder: str, ttl: float) -> bool:
    """Push the expiry of a lease ``holder`` still holds; False when it expired or was taken."""

    now = timezone.now()
    renewed = Lease.objects.filter(name=name, holder=holder, expires_at__gte=now).update(
        expires_at=now + timedelta(seconds=ttl)
    )
    return renewed == 1


def lease_release(*, name: str, holder: str) -> None:

    Lease.objects.filter(name=name, holder=holder).update(holder="", expires_at=None)


def service_key_rotate_webhook_secret(*, key: ServiceKey) -> str:
    """Give ``key`` a new callback signing secret and return it (``whsec_…``), shown once.

    Callbacks of tasks the key submitted are signed with it from the next attempt on; until the
    first rotation they are signed with the global ``WEBHOOK_SECRET``.
    """

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    ServiceKey.objects.filter(pk=key.pk).update(webhook_secret_encrypted=encrypt_secret(secret))
    key.refresh_from_db(fields=["webhook_secret_encrypted"])
    return secret


def admin_user_ensure(*, username: str, password: str | None) -> tuple[object, str | None] | None:
    """Create the first staff user when there is none; None when one exists already.

    Returns ``(user, generated_password)``: the password is generated (and returned, to be shown
    once) only when ``password`` is empty. Safe to run on several machines at once.
    """

    User = get_user_model()
    if User.objects.filter(is_staff=True).exists():
        return None
    generated = None if password else secrets.token_urlsafe(15)
    try:
        with transaction.atomic():
            user = User.objects.select_for_update().filter(username=username).first() or User(
                username=username
            )
            if user.pk and user.is_staff:
                return None
            user.is_staff = True
            user.is_superuser = True
            user.is_active = True
            user.set_password(password or generated)
            user.save()
    except IntegrityError:  # another machine created it between our check and our insert
        return None
    return user, generated
