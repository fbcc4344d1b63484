"""Accounts, holds and the append-only ledger.

Every change of ``Account.balance``/``Account.frozen`` is made by a service in ``services.py``
under a lock on the account row, and writes one ``LedgerEntry`` in the same transaction. The
database keeps both amounts ≥ 0 and each hold's settlement figures consistent with its status.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from podi.ids import new_id


def new_hold_id() -> str:
    return new_id("hold")


def new_entry_id() -> str:
    return new_id("txn")


class Account(models.Model):
    """One per user: ``balance`` is spendable, ``frozen`` is held for running work."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="wallet_account"
    )
    balance = models.BigIntegerField(default=0)
    frozen = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(balance__gte=0), name="wallet_account_balance_gte_0"
            ),
            models.CheckConstraint(condition=Q(frozen__gte=0), name="wallet_account_frozen_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.balance} + {self.frozen} frozen)"

    @property
    def total(self) -> int:
        return self.balance + self.frozen


class HoldStatus(models.TextChoices):
    HELD = "held", "held"
    CONFIRMED = "confirmed", "confirmed"
    RELEASED = "released", "released"
    EXPIRED = "expired", "expired"


class Hold(models.Model):
    """Points frozen for one piece of work, settled exactly once: confirmed, released or expired.

    ``task_id`` is a reference (the tasks app's public id), not a foreign key: the wallet does not
    depend on the tasks app. ``deducted`` + ``released`` = ``points`` once settled.
    """

    Status = HoldStatus

    public_id = models.CharField(max_length=32, unique=True, default=new_hold_id, editable=False)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="holds")
    task_id = models.CharField(max_length=64, blank=True, default="")
    points = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=HoldStatus.choices, default=HoldStatus.HELD)
    expires_at = models.DateTimeField()
    action = models.CharField(max_length=100, blank=True, default="")
    channel = models.CharField(max_length=64, blank=True, default="")
    deducted = models.BigIntegerField(default=0)
    released = models.BigIntegerField(default=0)
    owner_settles = models.BooleanField(
        default=False,
        help_text="Frozen by the account owner through the wallet API, so the owner may settle it "
        "there too. Holds frozen by a service (a task's hold) are settled only by that service, "
        "staff or a wallet:write key.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "task_id"],
                condition=~Q(task_id=""),
                name="wallet_hold_one_per_task",
            ),
            models.CheckConstraint(condition=Q(points__gt=0), name="wallet_hold_points_gt_0"),
            models.CheckConstraint(
                condition=(
                    Q(status=HoldStatus.HELD, deducted=0, released=0)
                    | Q(status=HoldStatus.CONFIRMED, deducted__gte=0, released__gte=0)
                    & Q(deducted=F("points") - F("released"))
                    | Q(status__in=[HoldStatus.RELEASED, HoldStatus.EXPIRED], deducted=0)
                    & Q(released=F("points"))
                ),
                name="wallet_hold_settlement_consistent",
            ),
        ]
        indexes = [models.Index(fields=["status", "expires_at"], name="wallet_hold_due_idx")]

    def __str__(self) -> str:
        return self.public_id

    @property
    def is_settled(self) -> bool:
        return self.status != HoldStatus.HELD

    def is_overdue(self, now=None) -> bool:
        """Still held past ``expires_at``: it can no longer be confirmed; expiry will release it."""
        return self.status == HoldStatus.HELD and self.expires_at <= (now or timezone.now())


class EntryType(models.TextChoices):
    GRANT = "grant", "grant"
    FREEZE = "freeze", "freeze"
    CONFIRM = "confirm", "confirm"
    RELEASE = "release", "release"
    EXPIRE = "expire", "expire"
    ADJUST = "adjust", "adjust"


class LedgerEntryQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("Ledger entries are append-only.")

    def delete(self):
        raise TypeError("Ledger entries are append-only.")


class LedgerEntry(models.Model):
    """One change of an account, append-only.

    ``points`` is the signed effect on what the user owns (balance + frozen): grant +, confirm −,
    adjust ±, and 0 for freeze, release and expire, which only move points between balance and
    frozen. ``amount`` is how many points the entry is about (held, charged, released, granted),
    always ≥ 0. ``balance_after``/``frozen_after`` are the account right after the entry.
    """

    Type = EntryType

    public_id = models.CharField(max_length=32, unique=True, default=new_entry_id, editable=False)
    # No index of its own: ``wallet_entry_account_idx`` (account, -created_at, -id) leads with it.
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="entries", db_index=False
    )
    type = models.CharField(max_length=16, choices=EntryType.choices)
    points = models.BigIntegerField()
    amount = models.BigIntegerField(default=0)
    balance_after = models.BigIntegerField()
    frozen_after = models.BigIntegerField()
    hold = models.ForeignKey(
        Hold, on_delete=models.PROTECT, null=True, blank=True, related_name="entries"
    )
    task_id = models.CharField(max_length=64, blank=True, default="")
    action = models.CharField(max_length=100, blank=True, default="")
    channel = models.CharField(max_length=64, blank=True, default="")
    reason = models.CharField(max_length=500, blank=True, default="")
    reference = models.CharField(max_length=128, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The staff user behind a grant or an adjustment made in the console.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = LedgerEntryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [
            models.UniqueConstraint(
                fields=["account", "reference"],
                condition=Q(type=EntryType.GRANT) & ~Q(reference=""),
                name="wallet_grant_reference_unique",
            ),
            models.CheckConstraint(condition=Q(amount__gte=0), name="wallet_entry_amount_gte_0"),
            models.CheckConstraint(
                condition=Q(balance_after__gte=0, frozen_after__gte=0),
                name="wallet_entry_after_gte_0",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "-created_at", "-id"], name="wallet_entry_account_idx"),
            models.Index(fields=["account", "type", "created_at"], name="wallet_entry_type_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type} {self.points:+d}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise TypeError("Ledger entries are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Ledger entries are append-only.")
