"""Reads of the wallet: accounts, holds (fetch-and-authorize), ledger entries and statistics."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate

from podi import error_codes as podi_codes
from podi.access import WRITE, Principal
from podi.errors import AppError
from wallet import error_codes as codes
from wallet.models import Account, EntryType, Hold, LedgerEntry

AREA = "wallet"
SETTLE = "settle"


def account_for_user(user) -> Account:
    """The user's account, created (empty) on first use."""
    account = Account.objects.filter(user=user).first()
    if account is not None:
        return account
    try:
        with transaction.atomic():
            return Account.objects.create(user=user)
    except IntegrityError:  # created concurrently
        return Account.objects.get(user=user)


def account_require_balance(*, user, points: int) -> None:
    """402 ``WALLET_INSUFFICIENT`` (as a freeze would answer) when the user's balance is below
    ``points``. A read, not a decision: callers use it to refuse early, before costly work,
    and still freeze, which decides (docs/adr/0011-money-holes.md)."""
    balance = Account.objects.filter(user=user).values_list("balance", flat=True).first() or 0
    if balance < points:
        raise AppError(
            codes.WALLET_INSUFFICIENT,
            f"Needs {points} points; the balance is {balance}.",
            details={"balance": balance, "required": points},
        )


def hold_get_for_principal(principal: Principal, hold_id: str, *, action: str = SETTLE) -> Hold:
    """The hold, if ``principal`` may settle it (docs/architecture.md §5).

    Staff and service-account keys with ``wallet:write``: any hold. Anyone else (a user, a key
    created for a user): only their own holds, else 404 ``WALLET_HOLD_NOT_FOUND``; and of those
    only the ones they froze themselves through the API (``owner_settles``), else 403
    ``FORBIDDEN``: a task's hold is settled by the task.
    """
    if principal.acts_for_anyone(AREA, WRITE):
        return hold_get(hold_id=hold_id)
    if not principal.has_scope(AREA, WRITE):
        raise AppError(codes.WALLET_HOLD_NOT_FOUND)
    hold = hold_get(hold_id=hold_id, user=principal.user_id)
    if action == SETTLE and not hold.owner_settles:
        raise AppError(
            podi_codes.FORBIDDEN,
            "This hold was frozen by a service (e.g. a task); that service settles it.",
        )
    return hold


def hold_get(*, hold_id: str, user=None) -> Hold:
    """The hold ``hold_id``; with ``user``, only when it is that user's (else 404 as well)."""
    queryset = Hold.objects.select_related("account")
    if user is not None:
        queryset = queryset.filter(account__user_id=getattr(user, "pk", user))
    hold = queryset.filter(public_id=hold_id).first() if isinstance(hold_id, str) else None
    if hold is None:
        raise AppError(codes.WALLET_HOLD_NOT_FOUND)
    return hold


def ledger_entries(
    *,
    account: Account,
    type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[LedgerEntry]:
    """The account's entries, newest first; ``since`` inclusive, ``until`` exclusive."""
    queryset = LedgerEntry.objects.filter(account=account)
    if type:
        queryset = queryset.filter(type=type)
    if since is not None:
        queryset = queryset.filter(created_at__gte=since)
    if until is not None:
        queryset = queryset.filter(created_at__lt=until)
    return queryset.select_related("hold").order_by("-created_at", "-id")


def account_statistics(
    *, account: Account, since: datetime | None = None, until: datetime | None = None
) -> dict:
    """Totals over the account's ledger in ``[since, until)``; balance and frozen are current.

    ``totalGranted`` sums grants, ``totalSpent`` the points charged by confirms,
    ``totalReleased`` the points given back by releases and expiries (including the unspent part
    of a partial confirm), ``totalAdjusted`` the signed staff corrections. Over the whole ledger
    ``balance + frozen = totalGranted − totalSpent + totalAdjusted``.
    """
    entries = ledger_entries(account=account, since=since, until=until).order_by()
    released_types = [EntryType.RELEASE, EntryType.EXPIRE]
    totals = entries.aggregate(
        granted=Coalesce(Sum("points", filter=Q(type=EntryType.GRANT)), 0),
        spent=Coalesce(Sum("amount", filter=Q(type=EntryType.CONFIRM)), 0),
        released=Coalesce(Sum("amount", filter=Q(type__in=released_types)), 0),
        adjusted=Coalesce(Sum("points", filter=Q(type=EntryType.ADJUST)), 0),
    )
    by_action = (
        entries.filter(type=EntryType.CONFIRM)
        .values("action")
        .annotate(spent=Coalesce(Sum("amount"), 0), count=Count("id"))
        .order_by("-spent", "action")
    )
    by_day = (
        entries.filter(type__in=[EntryType.GRANT, EntryType.CONFIRM])
        .annotate(date=TruncDate("created_at"))
        .values("date")
        .annotate(
            spent=Coalesce(Sum("amount", filter=Q(type=EntryType.CONFIRM)), 0),
            granted=Coalesce(Sum("points", filter=Q(type=EntryType.GRANT)), 0),
        )
        .order_by("date")
    )
    account.refresh_from_db(fields=["balance", "frozen"])
    return {
        "balance": account.balance,
        "frozen": account.frozen,
        "totalGranted": totals["granted"],
        "totalSpent": totals["spent"],
        "totalReleased": totals["released"],
        "totalAdjusted": totals["adjusted"],
        "byAction": [
            {"action": row["action"], "spent": row["spent"], "count": row["count"]}
            for row in by_action
        ],
        "byDay": [
            {"date": row["date"], "spent": row["spent"], "granted": row["granted"]}
            for row in by_day
        ],
    }
