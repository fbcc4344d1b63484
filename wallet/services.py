"""Writes of the wallet. Every function here:

- runs in ``transaction.atomic()`` (never ``durable``: ``task_submit``/``task_finish`` call them
  inside their own transaction; the API views make the outermost block durable);
- locks the account row (``select_for_update``) before reading anything it decides on, and takes
  hold rows only after their account, so two writers never wait on each other in a cycle;
- writes one ledger entry per change of the account in the same transaction;
- emits a ``wallet.points`` event ``{taskId?, holdId, status, points, balance}``, published after
  commit.

On SQLite ``select_for_update`` is a no-op, but every transaction starts ``IMMEDIATE`` (see
settings), which serialises writers for the whole transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from podi.errors import AppError, validation_error
from podi.events import emit
from wallet import error_codes as codes
from wallet.models import Account, EntryType, Hold, HoldStatus, LedgerEntry

EVENT_TYPE = "wallet.points"
MAX_POINTS = 10**12  # far above any real figure; keeps sums inside a 64-bit integer


def _points(value, *, field: str = "points", allow_zero: bool = False, signed: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise validation_error({field: ["Must be an integer."]})
    if signed:
        if value == 0 or abs(value) > MAX_POINTS:
            raise validation_error({field: [f"Must be non-zero, at most {MAX_POINTS} either way."]})
    elif not (0 if allow_zero else 1) <= value <= MAX_POINTS:
        low = 0 if allow_zero else 1
        raise validation_error({field: [f"Must be between {low} and {MAX_POINTS}."]})
    return value


def _locked_account(*, user=None, account_id: int | None = None) -> Account:
    """The account row, locked until the end of the transaction (created empty if missing)."""
    if account_id is not None:
        return Account.objects.select_for_update().get(pk=account_id)
    account = Account.objects.select_for_update().filter(user=user).first()
    if account is not None:
        return account
    try:
        with transaction.atomic():
            Account.objects.create(user=user)
    except IntegrityError:  # created concurrently; fall through and lock it
        pass
    return Account.objects.select_for_update().get(user=user)


def _save_account(account: Account, now: datetime) -> None:
    account.updated_at = now
    account.save(update_fields=["balance", "frozen", "updated_at"])


def _entry(account: Account, *, type: str, points: int, amount: int, now: datetime, **fields):
    return LedgerEntry.objects.create(
        account=account,
        type=type,
        points=points,
        amount=amount,
        balance_after=account.balance,
        frozen_after=account.frozen,
        created_at=now,
        **fields,
    )


def _emit(account: Account, *, status: str, points: int, hold: Hold | None = None) -> None:
    payload: dict = {"holdId": hold.public_id if hold else None}
    if hold is not None and hold.task_id:
        payload["taskId"] = hold.task_id
    payload.update(status=status, points=points, balance=account.balance)
    emit(
        user_id=account.user_id,
        type=EVENT_TYPE,
        payload=payload,
        task_id=(hold.task_id or None) if hold else None,
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _hold_fields(hold: Hold) -> dict:
    return {
        "hold": hold,
        "task_id": hold.task_id,
        "action": hold.action,
        "channel": hold.channel,
    }


# --- Grants and corrections -----------------------------------------------------------------


def wallet_grant(*, user, points: int, reason: str = "", reference: str = "", staff_user=None):
    """Add ``points`` to the user's balance. Idempotent by ``reference``: the same reference again
    returns the first entry (other points for it → 409 ``WALLET_GRANT_CONFLICT``).

    The returned entry's ``account`` is the account as it is now.
    """
    points = _points(points)
    reason = (reason or "")[:500]
    reference = reference or ""
    if len(reference) > 128:
        raise validation_error({"reference": ["At most 128 characters."]})
    with transaction.atomic():
        account = _locked_account(user=user)
        now = timezone.now()
        if reference:
            existing = LedgerEntry.objects.filter(
                account=account, type=EntryType.GRANT, reference=reference
            ).first()
            if existing is not None:
                if existing.points != points:
                    raise AppError(
                        codes.WALLET_GRANT_CONFLICT,
                        details={"entryId": existing.public_id, "points": existing.points},
                    )
                existing.account = account
                return existing
        account.balance += points
        _save_account(account, now)
        entry = _entry(
            account,
            type=EntryType.GRANT,
            points=points,
            amount=points,
            now=now,
            reason=reason,
            reference=reference,
            created_by=staff_user,
        )
        _emit(account, status="granted", points=points)
    return entry


def wallet_adjust(*, user, points: int, reason: str, staff_user) -> LedgerEntry:
    """A signed staff correction with a reason. Never drives the balance below 0 (402)."""
    points = _points(points, signed=True)
    reason = (reason or "").strip()
    if not reason:
        raise validation_error({"reason": ["A reason is required for an adjustment."]})
    with transaction.atomic():
        account = _locked_account(user=user)
        now = timezone.now()
        if account.balance + points < 0:
            raise AppError(
                codes.WALLET_INSUFFICIENT,
                f"An adjustment of {points} would take the balance of {account.balance} below 0.",
                details={"balance": account.balance, "required": -points},
            )
        account.balance += points
        _save_account(account, now)
        entry = _entry(
            account,
            type=EntryType.ADJUST,
            points=points,
            amount=abs(points),
            now=now,
            reason=reason[:500],
            created_by=staff_user,
        )
        _emit(account, status="adjusted", points=points)
    return entry


# --- Holds ----------------------------------------------------------------------------------


def hold_freeze(
    *,
    user,
    task_id: str,
    points: int,
    action: str = "",
    channel: str = "",
    ttl_seconds: int | None = None,
    owner_settles: bool = False,
) -> tuple[Hold, bool]:
    """Move ``points`` from balance to frozen under a new hold; ``(hold, created)``.

    Idempotent per ``(user, task_id)``: the same points again returns the existing hold with
    ``created=False``; other points → 409 ``WALLET_HOLD_CONFLICT``. Not enough balance → 402
    ``WALLET_INSUFFICIENT``, and nothing is written.
    """
    points = _points(points)
    task_id = task_id or ""
    if len(task_id) > 64:
        raise validation_error({"taskId": ["At most 64 characters."]})
    if ttl_seconds is None:
        ttl_seconds = settings.WALLET_HOLD_TTL
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
        raise validation_error({"ttlSeconds": ["Must be a positive integer."]})
    with transaction.atomic():
        account = _locked_account(user=user)
        now = timezone.now()
        if task_id:
            existing = Hold.objects.filter(account=account, task_id=task_id).first()
            if existing is not None:
                if existing.points != points:
                    raise AppError(
                        codes.WALLET_HOLD_CONFLICT,
                        details={"holdId": existing.public_id, "points": existing.points},
                    )
                existing.account = account
                return existing, False
        if account.balance < points:
            raise AppError(
                codes.WALLET_INSUFFICIENT,
                f"Needs {points} points; the balance is {account.balance}.",
                details={"balance": account.balance, "required": points},
            )
        account.balance -= points
        account.frozen += points
        _save_account(account, now)
        hold = Hold.objects.create(
            account=account,
            task_id=task_id,
            points=points,
            expires_at=now + timedelta(seconds=ttl_seconds),
            action=(action or "")[:100],
            channel=(channel or "")[:64],
            owner_settles=owner_settles,
            created_at=now,
            updated_at=now,
        )
        _entry(
            account, type=EntryType.FREEZE, points=0, amount=points, now=now, **_hold_fields(hold)
        )
        _emit(account, status="frozen", points=points, hold=hold)
    return hold, True


def _locked_hold(hold: Hold) -> tuple[Account, Hold]:
    """Lock the hold's account, then the hold; the returned hold carries the locked account."""
    account = _locked_account(account_id=hold.account_id)
    locked = Hold.objects.select_for_update().get(pk=hold.pk)
    locked.account = account
    return account, locked


def _give_back(account: Account, hold: Hold, *, amount: int, type: str, now: datetime) -> None:
    account.frozen -= amount
    account.balance += amount
    _entry(account, type=type, points=0, amount=amount, now=now, **_hold_fields(hold))


def hold_confirm(*, hold: Hold, points: int | None = None) -> Hold:
    """Charge the hold: all of it, or ``points`` ≤ held and give the rest back.

    Repeating a confirm is a no-op returning the settled hold. On a released hold → 409
    ``WALLET_HOLD_SETTLED``; on an expired hold, or one still held past ``expires_at`` → 409
    ``WALLET_HOLD_EXPIRED``.
    """
    if points is not None:
        points = _points(points, allow_zero=True)
    with transaction.atomic():
        account, hold = _locked_hold(hold)
        now = timezone.now()
        if hold.status == HoldStatus.CONFIRMED:
            return hold
        if hold.status == HoldStatus.RELEASED:
            raise AppError(codes.WALLET_HOLD_SETTLED, "This hold was released.")
        if hold.status == HoldStatus.EXPIRED or hold.is_overdue(now):
            raise AppError(codes.WALLET_HOLD_EXPIRED, details={"expiresAt": _iso(hold.expires_at)})
        charge = hold.points if points is None else points
        if charge > hold.points:
            raise validation_error({"points": [f"At most the {hold.points} points held."]})
        rest = hold.points - charge
        account.frozen -= charge
        fields = _hold_fields(hold)
        _entry(account, type=EntryType.CONFIRM, points=-charge, amount=charge, now=now, **fields)
        if rest:
            _give_back(account, hold, amount=rest, type=EntryType.RELEASE, now=now)
        _save_account(account, now)
        hold.status = HoldStatus.CONFIRMED
        hold.deducted = charge
        hold.released = rest
        hold.settled_at = hold.updated_at = now
        hold.save(update_fields=["status", "deducted", "released", "settled_at", "updated_at"])
        _emit(account, status="deducted", points=charge, hold=hold)
        if rest:
            _emit(account, status="released", points=rest, hold=hold)
    return hold


def hold_release(*, hold: Hold) -> Hold:
    """Give the held points back. Idempotent (a released or expired hold is returned as it is);
    on a confirmed hold → 409 ``WALLET_HOLD_SETTLED``."""
    with transaction.atomic():
        account, hold = _locked_hold(hold)
        now = timezone.now()
        if hold.status in (HoldStatus.RELEASED, HoldStatus.EXPIRED):
            return hold
        if hold.status == HoldStatus.CONFIRMED:
            raise AppError(codes.WALLET_HOLD_SETTLED, "This hold was confirmed.")
        _settle_back(account, hold, status=HoldStatus.RELEASED, now=now)
        _emit(account, status="released", points=hold.points, hold=hold)
    return hold


def _settle_back(account: Account, hold: Hold, *, status: str, now: datetime) -> None:
    entry_type = EntryType.RELEASE if status == HoldStatus.RELEASED else EntryType.EXPIRE
    _give_back(account, hold, amount=hold.points, type=entry_type, now=now)
    _save_account(account, now)
    hold.status = status
    hold.released = hold.points
    hold.settled_at = hold.updated_at = now
    hold.save(update_fields=["status", "released", "settled_at", "updated_at"])


def holds_expire(*, now: datetime | None = None, batch_size: int = 500) -> int:
    """Release every hold still held at ``now`` past its ``expires_at``, once (entry ``expire``).

    One transaction per account; a hold settled meanwhile by someone else is left alone.
    Returns how many holds this call expired.
    """
    now = now or timezone.now()
    expired = 0
    while True:
        account_ids = list(
            Hold.objects.filter(status=HoldStatus.HELD, expires_at__lte=now)
            .order_by("account_id")
            .values_list("account_id", flat=True)
            .distinct()[:batch_size]
        )
        if not account_ids:
            return expired
        for account_id in account_ids:
            expired += _expire_account_holds(account_id=account_id, now=now)


def _expire_account_holds(*, account_id: int, now: datetime) -> int:
    with transaction.atomic():
        account = _locked_account(account_id=account_id)
        holds = list(
            Hold.objects.select_for_update()
            .filter(account_id=account_id, status=HoldStatus.HELD, expires_at__lte=now)
            .order_by("pk")
        )
        stamp = timezone.now()
        for hold in holds:
            hold.account = account
            _settle_back(account, hold, status=HoldStatus.EXPIRED, now=stamp)
            _emit(account, status="expired", points=hold.points, hold=hold)
    return len(holds)
