from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

SERVICE_KEY_PREFIX = "psk_"

# What a service key may be granted. `<area>:write` implies `<area>:read`; `admin` implies all.
SCOPES = (
    "admin",
    "wallet:read",
    "wallet:write",
    "tasks:read",
    "tasks:write",
    "media:read",
    "media:write",
    "notify:write",
)


def hash_service_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ServiceKey(models.Model):
    """An API key for a partner service. Only its SHA-256 is stored; the key is shown once."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="First characters, to recognise the key.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="service_keys",
        help_text="The account the key acts as when no userId is given.",
    )
    user_bound = models.BooleanField(
        default=False,
        help_text="Created for a real user (--user): the key acts only for that user. Off: the "
        "key has its own service account (svc-<name>) and acts for any user in the areas of its "
        "scopes (README, 'Who may see what').",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    webhook_secret_encrypted = models.TextField(
        blank=True,
        default="",
        editable=False,
        help_text="Signs callbacks of tasks this key submits (Fernet-encrypted; empty: the "
        "global WEBHOOK_SECRET). Set by the rotate action, shown once.",
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate_raw() -> str:
        return SERVICE_KEY_PREFIX + secrets.token_urlsafe(32)

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()

    def has_scope(self, scope: str) -> bool:
        return scopes_grant(self.scopes, scope)

    @property
    def acts_for_anyone(self) -> bool:
        """A service-account key (no ``user_bound``): may act for any user where its scopes reach."""
        return not self.user_bound


def scopes_grant(scopes, scope: str) -> bool:
    """Whether ``scopes`` grant ``scope``: ``admin`` implies all, ``<area>:write`` its ``:read``."""
    if "admin" in scopes or scope in scopes:
        return True
    area, _, level = scope.partition(":")
    return level == "read" and f"{area}:write" in scopes


def is_service_account(user) -> bool:
    """The ``svc-<name>`` account ``service_key_create`` makes for a key without ``--user``."""
    password = user.password or ""
    return user.username.startswith("svc-") and (not password or password.startswith("!"))


class IdempotencyRecord(models.Model):
    """The stored response of a POST made with an Idempotency-Key (kept IDEMPOTENCY_TTL seconds)."""

    principal = models.CharField(max_length=64)
    route = models.CharField(max_length=255)
    key = models.CharField(max_length=255)
    body_hash = models.CharField(max_length=64)
    completed = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField(null=True)
    response = models.JSONField(null=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["principal", "route", "key"], name="idempotency_unique")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.route})"


class Lease(models.Model):
    """A named, expiring lock held by one process (e.g. the reconciler) across the fleet."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder or 'nobody'}"
