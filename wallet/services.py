"""Writes of the wallet. Every function here:

- is one transaction: ``transaction.atomic()`` (never ``durable``: ``task_submit``/``task_finish``
  call them inside their own transaction) or, on PostgreSQL, a freeze and a whole-hold settle
  as one statement with their event, which outside a caller's transaction commits by itself
  (docs/adr/0023-money-moves-in-one-statement.md);
- decides with guarded updates that must change exactly one row, never read-then-write:
  a hold changes state only by ``UPDATE … WHERE status = 'held'`` (so it is settled once, however
  many callers race), and the account only by a relative ``UPDATE … SET balance = balance + x …
  WHERE balance + x >= 0 RETURNING balance, frozen``, which takes the account's row lock and
  returns the figures the ledger entry records. ``CheckConstraint``s back both;
- takes row locks in one order — the hold first, then its account; a freeze on PostgreSQL,
  whose hold is new, locks the account and then the hold's (account, task) key — so
  writers never wait on each other in a cycle, and holds the hot account row only for that
  ``UPDATE``, the inserts and the commit (ADR 0003, ADR 0023);
- writes one ledger entry per change of the account in the same transaction;
- emits a ``wallet.points`` event ``{taskId?, holdId, status, points, balance}``, published after
  commit.

On SQLite every transaction starts ``IMMEDIATE`` (see settings), which serialises writers for the
whole transaction; the same statements are correct there too.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import CharField, F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from podi.access import owner_sql_of, owners_of
from podi.errors import AppError, validation_error
from podi.realtime.events import (
    StatementEvent,
    StatementEvents,
    emit,
    emit_in_statement,
    emit_several_in_statement,
)
from wallet import error_codes as codes
from wallet.models import Account, EntryType, Hold, HoldStatus, LedgerEntry, new_hold_id
from wallet.selectors import account_for_user, hold_get

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


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- The one way an account changes ---------------------------------------------------------


def _entry(*, type: str, points: int, amount: int, back: tuple[int, int] = (0, 0), **fields):
    """A ledger entry to append; ``back`` is how far its after-figures lie behind the account's
    figures after the whole change (for the first of two entries of one change)."""
    entry = LedgerEntry(type=type, points=points, amount=amount, **fields)
    entry._back = back
    return entry


def _hold_entry(hold: Hold, **kwargs) -> LedgerEntry:
    return _entry(
        hold=hold, task_id=hold.task_id, action=hold.action, channel=hold.channel, **kwargs
    )


def _apply(account: Account, *, balance: int, frozen: int, entries: list[LedgerEntry], now) -> bool:
    """Add ``balance`` and ``frozen`` (signed) to the account and append ``entries``, unless the
    balance would go below 0 (then False, and nothing changed).

    The change is one guarded ``UPDATE … WHERE balance + x >= 0 RETURNING balance, frozen``: it
    takes the account's row lock (held until commit) and must change exactly that row; the
    entries record the figures it returns. On PostgreSQL the update and the inserts are a single
    statement, so the hot row stays locked only for that statement and the commit; the entries
    are built before it. On success ``account`` and the entries carry the new figures.
    """
    for entry in entries:
        entry.account = account
        entry.created_at = now
    if connection.vendor == "postgresql":
        row = _apply_postgresql(account, balance, frozen, entries, now)
    else:
        row = _apply_generic(account, balance, frozen, entries, now)
    if row is None:
        return False
    account.balance, account.frozen = row
    account.updated_at = now
    return True


_ACCOUNT_UPDATE = (
    "UPDATE {account} SET balance = balance + %s, frozen = frozen + %s, updated_at = %s "
    "WHERE id = %s AND balance + %s >= 0 RETURNING balance, frozen"
)


_ENTRY_FIGURES = {"balance_after": "balance", "frozen_after": "frozen"}


@functools.cache
def _entry_fields() -> list:
    return [f for f in LedgerEntry._meta.concrete_fields if not f.primary_key]


def _entry_select(from_rows: dict[str, str]) -> tuple[list[str], list]:
    """The ``SELECT`` items of an entry's insert, in column order: the SQL ``from_rows`` gives
    for a column, else a typed parameter; and the fields given as parameters, in order."""
    fields = _entry_fields()
    items = [
        from_rows.get(f.attname)
        or f"%s::{'text' if isinstance(f, CharField) else f.cast_db_type(connection)}"
        for f in fields
    ]
    return items, [f for f in fields if f.attname not in from_rows]


@functools.cache
def _apply_sql(entry_count: int) -> str:
    """``UPDATE`` the account and ``INSERT`` ``entry_count`` entries in one statement."""
    # Only table and column names of our own models are interpolated; values are parameters.
    quote = connection.ops.quote_name
    fields = _entry_fields()
    items = []
    for field in fields:
        if field.attname in _ENTRY_FIGURES:
            items.append(f"moved.{_ENTRY_FIGURES[field.attname]} - %s")
        else:
            # Strings as text: an over-long value then fails instead of being cut by a cast.
            cast = "text" if isinstance(field, CharField) else field.cast_db_type(connection)
            items.append(f"%s::{cast}")
    select = f"SELECT {', '.join(items)} FROM moved"  # noqa: S608
    update = _ACCOUNT_UPDATE.format(account=quote(Account._meta.db_table))
    insert = (
        f"INSERT INTO {quote(LedgerEntry._meta.db_table)} "
        f"({', '.join(quote(f.column) for f in fields)}) "
        + " UNION ALL ".join([select] * entry_count)
        + " RETURNING id, balance_after, frozen_after"
    )
    return (
        f"WITH moved AS ({update}), added AS ({insert}) "  # noqa: S608
        "SELECT moved.balance, moved.frozen, added.id, added.balance_after, added.frozen_after "
        "FROM moved CROSS JOIN added ORDER BY added.id"
    )


def _apply_postgresql(account, balance, frozen, entries, now):
    params = [balance, frozen, now, account.pk, balance]
    for entry in entries:
        for field in _entry_fields():
            if field.attname == "balance_after":
                params.append(entry._back[0])
            elif field.attname == "frozen_after":
                params.append(entry._back[1])
            else:
                params.append(field.get_db_prep_save(getattr(entry, field.attname), connection))
    with connection.cursor() as cursor:
        cursor.execute(_apply_sql(len(entries)), params)
        rows = cursor.fetchall()
    if not rows:
        return None
    for entry, (_, _, pk, balance_after, frozen_after) in zip(entries, rows, strict=True):
        entry.pk, entry.balance_after, entry.frozen_after = pk, balance_after, frozen_after
        entry._state.adding, entry._state.db = False, connection.alias
    return rows[0][:2]


def _apply_generic(account, balance, frozen, entries, now):
    """SQLite: the transaction already holds the database's write lock (IMMEDIATE)."""
    table = connection.ops.quote_name(Account._meta.db_table)
    update = _ACCOUNT_UPDATE.format(account=table)
    when = connection.ops.adapt_datetimefield_value(now)
    params = [balance, frozen, when, account.pk, balance]
    with connection.cursor() as cursor:
        if connection.features.can_return_columns_from_insert:  # SQLite ≥ 3.35
            cursor.execute(update, params)
            row = cursor.fetchone()
        else:
            cursor.execute(update.removesuffix(" RETURNING balance, frozen"), params)
            row = None
            if cursor.rowcount == 1:
                select = f"SELECT balance, frozen FROM {table} WHERE id = %s"  # noqa: S608
                cursor.execute(select, [account.pk])
                row = cursor.fetchone()
    if row is None:
        return None
    for entry in entries:
        entry.balance_after = row[0] - entry._back[0]
        entry.frozen_after = row[1] - entry._back[1]
    LedgerEntry.objects.bulk_create(entries)
    return row


def _account_ref(user) -> Account:
    """A handle on the user's account (created on first use): its id and owner only; the figures
    are filled in by the change that follows. One indexed lookup, without the ORM's overhead."""
    table = connection.ops.quote_name(Account._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {table} WHERE user_id = %s", [user.pk])  # noqa: S608
        row = cursor.fetchone()
    account_id = row[0] if row else account_for_user(user).pk
    return Account(pk=account_id, user_id=user.pk)


@functools.cache
def _hold_insert_sql() -> tuple[str, list]:
    quote = connection.ops.quote_name
    fields = [
        f for f in Hold._meta.concrete_fields if not f.primary_key and f.attname != "account_id"
    ]
    columns = ", ".join(quote(f.column) for f in fields)
    values = ", ".join(["%s"] * len(fields))
    sql = (
        f"INSERT INTO {quote(Hold._meta.db_table)} ({columns}, {quote('account_id')}) "  # noqa: S608
        f"SELECT {values}, account.id FROM {quote(Account._meta.db_table)} account "
        "WHERE account.user_id = %s RETURNING id, account_id"
    )
    return sql, fields


def _hold_insert(hold: Hold, user) -> Account:
    """Insert ``hold`` on ``user``'s account, found by the insert itself (one statement); the
    account is created first if the user has none. Returns a handle on the account (id and
    owner; the figures are filled in by the change that follows)."""
    sql, fields = _hold_insert_sql()
    params = [f.get_db_prep_save(getattr(hold, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, user.pk])
        row = cursor.fetchone()
    if row is None:
        # No account yet: created with the first change, inside this transaction, so a refused
        # first freeze leaves no account either.
        account = Account(pk=account_for_user(user).pk, user_id=user.pk)
        hold.account = account
        hold.save(force_insert=True)
        return account
    account = Account(pk=row[1], user_id=user.pk)
    hold.pk, hold.account = row[0], account
    hold._state.adding, hold._state.db = False, connection.alias
    return account


def _insufficient(account: Account, needed: int, message: str) -> AppError:
    account.refresh_from_db(fields=["balance", "frozen"])
    return AppError(
        codes.WALLET_INSUFFICIENT,
        message.format(needed=needed, balance=account.balance),
        details={"balance": account.balance, "required": needed},
    )


def _payload(account: Account, *, status: str, points: int, hold: Hold | None) -> dict:
    payload: dict = {"holdId": hold.public_id if hold else None}
    if hold is not None and hold.task_id:
        payload["taskId"] = hold.task_id
    payload.update(status=status, points=points, balance=account.balance)
    return payload


def _emit(account: Account, *, status: str, points: int, hold: Hold | None = None) -> None:
    emit(
        user_id=account.user_id,
        type=EVENT_TYPE,
        payload=_payload(account, status=status, points=points, hold=hold),
        task_id=(hold.task_id or None) if hold else None,
    )


def _payload_sql(hold: str, account: str, status: str) -> str:
    """``_payload`` of a whole hold in SQL, for an event recorded in the statement that moved
    it: ``hold`` and ``account`` name its CTEs; ``status`` is one of our own words."""
    if status not in {"frozen", "deducted", "released"}:
        raise ValueError(status)
    return (
        f"jsonb_build_object('holdId', {hold}.public_id, 'status', '{status}', "
        f"'points', {hold}.points, 'balance', {account}.balance) || CASE WHEN "
        f"{hold}.task_id <> '' THEN jsonb_build_object('taskId', {hold}.task_id) "
        "ELSE '{}'::jsonb END"
    )


def _statement_event(hold: str, account: str, status: str) -> StatementEvent | None:
    return emit_in_statement(
        type=EVENT_TYPE,
        source=f"{hold} CROSS JOIN {account}",
        user_sql=f"{account}.user_id",
        task_sql=f"{hold}.task_id",
        payload_sql=_payload_sql(hold, account, status),
    )


def _emitted(recorded: StatementEvent, seq, account: Account, *, status: str, hold: Hold) -> None:
    recorded.emitted(
        user_id=account.user_id,
        payload=_payload(account, status=status, points=hold.points, hold=hold),
        seq=seq,
        task_id=hold.task_id or None,
    )


# --- Grants and corrections -----------------------------------------------------------------


def account_open(*, user) -> Account:
    """The user's (empty) account, opened when the user is created; the existing one if any."""
    return account_for_user(user)


def wallet_grant(*, user, points: int, reason: str = "", reference: str = "", staff_user=None):
    """Add ``points`` to the user's balance. Idempotent by ``reference``: the same reference again
    returns the first entry (other points for it → 409 ``WALLET_GRANT_CONFLICT``).

    The returned entry's ``account`` carries the account's current balance and frozen.
    """
    points = _points(points)
    reason = (reason or "")[:500]
    reference = reference or ""
    if len(reference) > 128:
        raise validation_error({"reference": ["At most 128 characters."]})
    try:
        with transaction.atomic():
            account = _account_ref(user)
            if reference:
                existing = _granted(account, reference, points)
                if existing is not None:
                    return existing
            now = timezone.now()
            entry = _entry(
                type=EntryType.GRANT,
                points=points,
                amount=points,
                reason=reason,
                reference=reference,
                created_by=staff_user,
            )
            _apply(account, balance=points, frozen=0, entries=[entry], now=now)
            _emit(account, status="granted", points=points)
    except IntegrityError:  # the same reference, granted concurrently
        existing = _granted(_account_ref(user), reference, points) if reference else None
        if existing is None:
            raise
        return existing
    return entry


def _granted(account: Account, reference: str, points: int) -> LedgerEntry | None:
    existing = LedgerEntry.objects.filter(
        account=account, type=EntryType.GRANT, reference=reference
    ).first()
    if existing is None:
        return None
    if existing.points != points:
        raise AppError(
            codes.WALLET_GRANT_CONFLICT,
            details={"entryId": existing.public_id, "points": existing.points},
        )
    account.refresh_from_db(fields=["balance", "frozen"])
    existing.account = account
    return existing


def wallet_adjust(*, user, points: int, reason: str, staff_user) -> LedgerEntry:
    """A signed staff correction with a reason. Never drives the balance below 0 (402)."""
    points = _points(points, signed=True)
    reason = (reason or "").strip()
    if not reason:
        raise validation_error({"reason": ["A reason is required for an adjustment."]})
    with transaction.atomic():
        account = _account_ref(user)
        now = timezone.now()
        entry = _entry(
            type=EntryType.ADJUST,
            points=points,
            amount=abs(points),
            reason=reason[:500],
            created_by=staff_user,
        )
        if not _apply(account, balance=points, frozen=0, entries=[entry], now=now):
            raise _insufficient(
                account,
                -points,
                "An adjustment of -{needed} needs more than the balance {balance}.",
            )
        _emit(account, status="adjusted", points=points)
    return entry


# --- Holds ----------------------------------------------------------------------------------


@functools.cache
def _freeze_in_one_sql(
    ctes: str, seq_sql: str, owner_sql: str, key_first: bool
) -> tuple[str, list, list]:
    """Freeze in one statement (PostgreSQL): move the points on the user's account, insert the
    hold on it and append the entry; ``ctes`` may record the event too. With ``owner_sql`` the
    task must be nobody else's. Returns the SQL and the hold's and the entry's fields given as
    parameters, in order.

    ``key_first``: the hold is inserted first, so the hold's (account, task) key is taken before
    the account's row, in the order every settle takes them (hold, then account); too few points
    then fail the account's ``CHECK (balance >= 0)``, which undoes the statement. Otherwise (a new
    task's freeze, whose key nobody else can hold) the account moves first under a guard, and
    too few points write nothing without an error, so the caller's transaction stays usable."""
    quote = connection.ops.quote_name
    account_table, hold_table = quote(Account._meta.db_table), quote(Hold._meta.db_table)
    hold_fields = [
        f for f in Hold._meta.concrete_fields if not f.primary_key and f.attname != "account_id"
    ]
    from_rows = {
        "account_id": "m.id",
        "balance_after": "m.balance",
        "frozen_after": "m.frozen",
        "hold_id": "h.id",
    }
    entry_fields = _entry_fields()
    items, given = _entry_select(from_rows)
    # Only table and column names of our own models are interpolated; values are parameters.
    owner_guard = (
        f" AND NOT EXISTS (SELECT 1 FROM ({owner_sql}) o WHERE o.user_id <> a.user_id)"  # noqa: S608
        if owner_sql
        else ""
    )
    hold_columns = f"{', '.join(quote(f.column) for f in hold_fields)}, {quote('account_id')}"
    hold_values = ", ".join(["%s"] * len(hold_fields))
    moved = "a.balance - %s, frozen = a.frozen + %s, updated_at = %s"
    if key_first:
        insert = (
            f"INSERT INTO {hold_table} ({hold_columns}) SELECT {hold_values}, a.id "  # noqa: S608
            f"FROM {account_table} a WHERE a.user_id = %s{owner_guard} "
            "RETURNING id, public_id, points, task_id, account_id"
        )
        move = (
            f"UPDATE {account_table} a SET balance = {moved} WHERE a.user_id = %s "  # noqa: S608
            "AND EXISTS (SELECT 1 FROM h) RETURNING a.id, a.user_id, a.balance, a.frozen"
        )
        first = f"h AS ({insert}), m AS ({move})"
    else:
        move = (
            f"UPDATE {account_table} a SET balance = {moved} "  # noqa: S608
            f"WHERE a.user_id = %s AND a.balance - %s >= 0{owner_guard} "
            "RETURNING a.id, a.user_id, a.balance, a.frozen"
        )
        insert = (
            f"INSERT INTO {hold_table} ({hold_columns}) SELECT {hold_values}, m.id FROM m "  # noqa: S608
            "RETURNING id, public_id, points, task_id"
        )
        first = f"m AS ({move}), h AS ({insert})"
    append = (
        f"INSERT INTO {quote(LedgerEntry._meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(f.column) for f in entry_fields)}) "
        f"SELECT {', '.join(items)} FROM h CROSS JOIN m RETURNING id"
    )
    sql = (
        f"WITH {first}, e AS ({append}){', ' + ctes if ctes else ''} "  # noqa: S608
        f"SELECT m.id, m.balance, m.frozen, h.id, {seq_sql or 'NULL'} "
        "FROM m CROSS JOIN h CROSS JOIN e"
    )
    return sql, hold_fields, given


_NEEDS = "Needs {needed} points; the balance is {balance}."


_SPENT = "wallet_account_balance_gte_0"  # the account's CHECK that a key-first freeze can fail


def _check_task_owner(task_id: str, user) -> None:
    """404 ``WALLET_TASK_NOT_FOUND`` when ``task_id`` names another user's PODI task."""
    if owners_of("task", [task_id]).get(task_id, user.pk) != user.pk:
        raise AppError(codes.WALLET_TASK_NOT_FOUND, details={"taskId": task_id})


def _run_one(sql: str, params: list) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _violated(exc: IntegrityError) -> str:
    """The name of the constraint ``exc`` reports (empty when it names none)."""
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None) or ""


def _emit_after(user, task_id: str, events: Sequence[tuple[str, dict]]) -> None:
    for type, payload in events:
        emit(user_id=user.pk, type=type, payload=payload, task_id=task_id or None)


def _freeze_events(events_after: Sequence[tuple[str, dict]]) -> StatementEvents | None:
    """The freeze's ``wallet.points`` and ``events_after`` (none for most freezes) recorded by
    the freeze's statement (``h`` the hold, ``m`` the account), in that order; None where they
    cannot be."""
    return emit_several_in_statement(
        events=[
            (EVENT_TYPE, _payload_sql("h", "m", "frozen"), []),
            *((type, "%s::jsonb", [json.dumps(payload)]) for type, payload in events_after),
        ],
        source="h CROSS JOIN m",
        user_sql="m.user_id",
        task_sql="h.task_id",
    )


def _freeze_in_one(
    hold: Hold,
    user,
    *,
    now: datetime,
    new_task: bool,
    owner_sql: str,
    events_after: Sequence[tuple[str, dict]] = (),
) -> None:
    """``hold_freeze``'s write on PostgreSQL, in one statement with its event: in autocommit it is
    its own transaction, so the hot account row is locked only while that statement runs.

    Lock order: the hold's (account, task) key, then the account's row, as every settle takes
    them (ADR 0023); a duplicate raises ``IntegrityError`` with nothing written. A new task's
    freeze moves the account first: its key is fresh, nobody else can hold it. Not enough points
    → 402, also for a user without an account (none is made for a refusal).
    """
    recorded = _freeze_events(events_after)
    in_block = transaction.get_connection().in_atomic_block
    # A savepoint only where the caller's transaction must survive a duplicate; no transaction
    # block at all where the statement, event included, is the whole change.
    block = (
        contextlib.nullcontext()
        if recorded is not None and not in_block
        else transaction.atomic(savepoint=not new_task)
    )
    key_first = not new_task
    sql, hold_fields, given = _freeze_in_one_sql(
        recorded.ctes if recorded else "",
        recorded.last_seq_sql if recorded else "",
        owner_sql,
        key_first,
    )
    points = hold.points
    entry = _hold_entry(hold, type=EntryType.FREEZE, points=0, amount=points, created_at=now)
    moved = [points, points, now]
    hold_params = [f.get_db_prep_save(getattr(hold, f.attname), connection) for f in hold_fields]
    owner = [hold.task_id] if owner_sql else []
    if key_first:
        params = [*hold_params, user.pk, *owner, *moved, user.pk]
    else:
        params = [*moved, user.pk, points, *owner, *hold_params]
    params += [f.get_db_prep_save(getattr(entry, f.attname), connection) for f in given]
    if recorded is not None:
        params += recorded.params
    try:
        with block:
            row = _run_one(sql, params)
            if row is None:
                _refused(hold, user, owner_sql=owner_sql)
            account_id, balance, frozen, hold_pk, seq = row
            account = Account(pk=account_id, user_id=user.pk, balance=balance, frozen=frozen)
            account.updated_at = now
            hold.pk, hold.account = hold_pk, account
            hold._state.adding, hold._state.db = False, connection.alias
            if recorded is not None:
                frozen = _payload(account, status="frozen", points=hold.points, hold=hold)
                recorded.emitted(
                    seq,
                    user_id=user.pk,
                    task_id=hold.task_id or None,
                    payloads=[frozen, *(payload for _, payload in events_after)],
                )
            else:
                _emit(account, status="frozen", points=points, hold=hold)
                _emit_after(user, hold.task_id, events_after)
    except IntegrityError as exc:
        if _violated(exc) != _SPENT:
            raise
        # Too few points, found by the account's CHECK (key first): the statement is undone.
        account = Account.objects.filter(user_id=user.pk).only("id", "user_id").get()
        raise _insufficient(account, points, _NEEDS) from None


def _refused(hold: Hold, user, *, owner_sql: str) -> NoReturn:
    """Why a freeze's statement moved nothing: another user's task (404), or no account, or (a
    new task's freeze) too few points (402)."""
    if owner_sql:
        _check_task_owner(hold.task_id, user)
    account = Account.objects.filter(user_id=user.pk).only("id", "user_id").first()
    if account is None:  # no account yet, so nothing to freeze (and none is made)
        raise AppError(
            codes.WALLET_INSUFFICIENT,
            _NEEDS.format(needed=hold.points, balance=0),
            details={"balance": 0, "required": hold.points},
        )
    raise _insufficient(account, hold.points, _NEEDS)


def hold_freeze(
    *,
    user,
    task_id: str,
    points: int,
    action: str = "",
    channel: str = "",
    ttl_seconds: int | None = None,
    owner_settles: bool = False,
    new_task: bool = False,
    hold_id: str = "",
    events_after: Sequence[tuple[str, dict]] = (),
) -> tuple[Hold, bool]:
    """Move ``points`` from balance to frozen under a new hold; ``(hold, created)``.

    Idempotent per ``(user, task_id)``: the same points again returns the existing hold with
    ``created=False``; other points → 409 ``WALLET_HOLD_CONFLICT``. Not enough balance → 402
    ``WALLET_INSUFFICIENT``, and nothing is written. The hold's ``account`` carries the account's
    current balance and frozen.

    ``task_id`` is the caller's reference; when it names a PODI task (the owner lookup ``tasks``
    registers) that task must be ``user``'s, else 404 ``WALLET_TASK_NOT_FOUND``: the hold's
    events are linked to the task, and nobody may add to another user's task history.

    ``new_task``: the caller creates the task ``task_id`` (a fresh id) for ``user`` in its own
    transaction, so there is no owner to look up and no earlier hold to find: the freeze runs
    in that transaction without a savepoint of its own. It may name the hold (``hold_id``, from
    ``new_hold_id``) so that it can write the task before the freeze: the account's row, which
    every task of the user shares, is then locked only from the freeze to the commit.

    ``events_after`` (only with ``new_task``): that task's events, ``(type, payload)``, to record
    right after the freeze's own ``wallet.points``. On PostgreSQL, outside ``events_batched``,
    the freeze's statement records them all, so the caller's transaction can end with it: the
    account's row (and the user's event cursor) stay locked for one round trip, not one per
    write (ADR 0034). Elsewhere they are emitted after the freeze's event, as ``emit`` does.
    """
    points = _points(points)
    task_id = task_id or ""
    if len(task_id) > 64:
        raise validation_error({"taskId": ["At most 64 characters."]})
    if new_task and not (task_id and transaction.get_connection().in_atomic_block):
        raise ValueError("new_task needs the task id and the caller's transaction")
    if (hold_id or events_after) and not new_task:
        raise ValueError("only a new task's hold is named, or carries events, by its caller")
    # On PostgreSQL the freeze's own statement checks whose task it is (one round trip less).
    owner_sql = ""
    if task_id and not new_task:
        owner_sql = owner_sql_of("task") if connection.vendor == "postgresql" else ""
        if not owner_sql:
            _check_task_owner(task_id, user)
    if ttl_seconds is None:
        ttl_seconds = settings.WALLET_HOLD_TTL
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
        raise validation_error({"ttlSeconds": ["Must be a positive integer."]})
    now = timezone.now()
    hold = Hold(
        public_id=hold_id or new_hold_id(),
        task_id=task_id,
        points=points,
        expires_at=now + timedelta(seconds=ttl_seconds),
        action=(action or "")[:100],
        channel=(channel or "")[:64],
        owner_settles=owner_settles,
        created_at=now,
        updated_at=now,
    )
    try:
        if connection.vendor == "postgresql":
            _freeze_in_one(
                hold,
                user,
                now=now,
                new_task=new_task,
                owner_sql=owner_sql,
                events_after=events_after,
            )
        else:
            with transaction.atomic(savepoint=not new_task):
                # The hold first: a second freeze for the same task stops here, on the unique
                # (account, task_id) constraint, before it touches the account row.
                account = _hold_insert(hold, user)
                entry = _hold_entry(hold, type=EntryType.FREEZE, points=0, amount=points)
                if not _apply(account, balance=-points, frozen=points, entries=[entry], now=now):
                    raise _insufficient(account, points, _NEEDS)
                _emit(account, status="frozen", points=points, hold=hold)
                _emit_after(user, task_id, events_after)
    except IntegrityError:
        account = _account_ref(user)
        existing = (
            Hold.objects.filter(account=account, task_id=task_id).first() if task_id else None
        )
        if existing is None:
            raise
        if existing.points != points:
            raise AppError(
                codes.WALLET_HOLD_CONFLICT,
                details={"holdId": existing.public_id, "points": existing.points},
            ) from None
        account.refresh_from_db(fields=["balance", "frozen"])
        existing.account = account
        return existing, False
    return hold, True


def _account_of(hold: Hold) -> Account:
    if Hold.account.is_cached(hold):
        return hold.account
    return Account.objects.only("id", "user_id").get(pk=hold.account_id)


def _as_it_is(hold: Hold, account: Account) -> Hold:
    """The hold as stored now, with its account's current figures (for no-ops and refusals)."""
    current = Hold.objects.get(pk=hold.pk)
    account.refresh_from_db(fields=["balance", "frozen"])
    current.account = account
    return current


def _settle(hold: Hold, *, now: datetime, status: str, deducted: int, due_by: datetime | None):
    """Move a held hold to ``status``, once: True when this call did it."""
    guard = Hold.objects.filter(pk=hold.pk, status=HoldStatus.HELD)
    if status == HoldStatus.CONFIRMED:
        guard = guard.filter(expires_at__gt=now)
    if due_by is not None:
        guard = guard.filter(expires_at__lte=due_by)
    return (
        guard.update(
            status=status,
            deducted=deducted,
            released=hold.points - deducted,
            settled_at=now,
            updated_at=now,
        )
        == 1
    )


def hold_confirm(*, hold: Hold, points: int | None = None, expired_ok: bool = False) -> Hold | None:
    """Charge the hold: all of it, or ``points`` ≤ held and give the rest back.

    Repeating a confirm is a no-op returning the settled hold. On a released hold → 409
    ``WALLET_HOLD_SETTLED``; on an expired hold, or one still held past ``expires_at`` → 409
    ``WALLET_HOLD_EXPIRED`` (or None with ``expired_ok``, for a caller that goes on in its
    transaction). The returned hold's ``account`` carries the current figures.

    No savepoint of its own: a refusal writes nothing and is raised after the atomic block, so
    the caller's transaction stays usable; a database error fails the caller's change. On
    PostgreSQL a whole hold still held is confirmed in one statement (ADR 0019).
    """
    if points is not None:
        points = _points(points, allow_zero=True)
    charge = hold.points if points is None else points
    if charge == hold.points and (settled := _settle_in_one(hold.public_id, HoldStatus.CONFIRMED)):
        return _took(hold, settled)
    account = _account_of(hold)
    with transaction.atomic(savepoint=False):
        now = timezone.now()
        settled = charge <= hold.points and _settle(
            hold, now=now, status=HoldStatus.CONFIRMED, deducted=charge, due_by=None
        )
        if settled:
            rest = hold.points - charge
            entries = [
                _hold_entry(
                    hold, type=EntryType.CONFIRM, points=-charge, amount=charge, back=(rest, -rest)
                )
            ]
            if rest:  # the unspent part goes back in the same change, shown as its own entry
                entries.append(_hold_entry(hold, type=EntryType.RELEASE, points=0, amount=rest))
            _apply(account, balance=rest, frozen=-hold.points, entries=entries, now=now)
            _emit(account, status="deducted", points=charge, hold=hold)
            if rest:
                _emit(account, status="released", points=rest, hold=hold)
    if not settled:
        # Refused, with nothing written: decided outside the atomic block, so a caller's
        # transaction stays usable after the error.
        current = _as_it_is(hold, account)
        if current.status == HoldStatus.CONFIRMED:
            return current
        if current.status == HoldStatus.RELEASED:
            raise AppError(codes.WALLET_HOLD_SETTLED, "This hold was released.")
        if current.status == HoldStatus.EXPIRED or current.is_overdue(now):
            if expired_ok:
                return None
            raise AppError(
                codes.WALLET_HOLD_EXPIRED, details={"expiresAt": _iso(current.expires_at)}
            )
        raise validation_error({"points": [f"At most the {hold.points} points held."]})
    hold.status, hold.deducted, hold.released = HoldStatus.CONFIRMED, charge, rest
    hold.settled_at = hold.updated_at = now
    hold.account = account
    return hold


def hold_confirm_by_id(*, hold_id: str, expired_ok: bool = False) -> Hold | None:
    """``hold_confirm`` of all of the hold ``hold_id`` (a service's own hold, e.g. a task's),
    without reading it first: on PostgreSQL a held, unexpired hold is settled, its account
    changed and its entry written in one statement. Anything else (settled, expired, SQLite)
    takes ``hold_confirm``'s path, with the same answers."""
    settled = _settle_in_one(hold_id, HoldStatus.CONFIRMED)
    if settled is not None:
        return settled
    return hold_confirm(hold=hold_get(hold_id=hold_id), expired_ok=expired_ok)


def hold_release_by_id(*, hold_id: str) -> Hold:
    """``hold_release`` of the hold ``hold_id``, in one statement on PostgreSQL when it is held."""
    settled = _settle_in_one(hold_id, HoldStatus.RELEASED)
    if settled is not None:
        return settled
    return hold_release(hold=hold_get(hold_id=hold_id))


def _took(hold: Hold, settled: Hold) -> Hold:
    """The caller's ``hold`` with the state ``settled`` (from the one statement) gave it."""
    for name in ("status", "deducted", "released", "settled_at", "updated_at", "expires_at"):
        setattr(hold, name, getattr(settled, name))
    hold.account = settled.account
    return hold


@functools.cache
def _settle_ctes(status: str, key_sql: str, after_sql: str, names: tuple[str, str, str]):
    """The CTEs that settle a held hold, move its points on the account and append its entry:
    the hold's row lock first, then the account's (the module's order). ``key_sql`` gives the
    hold's public id (``%s`` for a parameter); ``after_sql``, when given, is a condition the
    hold's update also waits for (a caller's earlier CTE); ``names`` name the settled hold, the
    moved account and the entry. Returns the CTE text and the entry's fields given as
    parameters (after the CTEs' own: status, now, now, [key], held, [now], now)."""
    quote = connection.ops.quote_name
    hold_table, account_table = quote(Hold._meta.db_table), quote(Account._meta.db_table)
    hold_columns = ", ".join(f"h.{quote(f.column)}" for f in Hold._meta.concrete_fields)
    settled, moved, entry = names
    confirm = status == HoldStatus.CONFIRMED
    # What the entry's columns take: settled hold, moved account, or a parameter.
    from_rows = {
        "account_id": f"{moved}.id",
        "points": f"-{settled}.points" if confirm else "0",
        "amount": f"{settled}.points",
        "balance_after": f"{moved}.balance",
        "frozen_after": f"{moved}.frozen",
        "hold_id": f"{settled}.id",
        "task_id": f"{settled}.task_id",
        "action": f"{settled}.action",
        "channel": f"{settled}.channel",
    }
    fields = _entry_fields()
    items, given = _entry_select(from_rows)
    entries = quote(LedgerEntry._meta.db_table)
    overdue_guard = " AND h.expires_at > %s" if confirm else ""
    after_guard = f" AND {after_sql}" if after_sql else ""
    # Only table and column names of our own models are interpolated; values are parameters.
    settle = (
        f"UPDATE {hold_table} h SET status = %s, deducted = {'h.points' if confirm else '0'}, "  # noqa: S608
        f"released = {'0' if confirm else 'h.points'}, settled_at = %s, updated_at = %s "
        f"WHERE h.public_id = {key_sql} AND h.status = %s{overdue_guard}{after_guard} "
        f"RETURNING {hold_columns}"
    )
    move = (
        f"UPDATE {account_table} a SET balance = a.balance + "  # noqa: S608
        f"{'0' if confirm else f'{settled}.points'}, frozen = a.frozen - {settled}.points, "
        f"updated_at = %s FROM {settled} WHERE a.id = {settled}.account_id "
        "RETURNING a.id, a.user_id, a.balance, a.frozen"
    )
    append = (
        f"INSERT INTO {entries} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
        f"SELECT {', '.join(items)} FROM {settled} CROSS JOIN {moved} RETURNING id"
    )
    ctes = f"{settled} AS ({settle}), {moved} AS ({move}), {entry} AS ({append})"
    return ctes, given


def _settle_params(status: str, now: datetime, key: list, given: list) -> list:
    confirm = status == HoldStatus.CONFIRMED
    entry = LedgerEntry(type=EntryType.CONFIRM if confirm else EntryType.RELEASE, created_at=now)
    params: list = [status, now, now, *key, HoldStatus.HELD]
    if confirm:
        params.append(now)
    params.append(now)
    return params + [f.get_db_prep_save(getattr(entry, f.attname), connection) for f in given]


def _settled_hold(values: tuple | list, now: datetime) -> Hold:
    """The hold and its account as a settle's CTEs returned them (the hold's columns, then the
    account's user id, balance and frozen)."""
    names = [f.attname for f in Hold._meta.concrete_fields]
    hold = Hold(**dict(zip(names, values, strict=False)))
    hold._state.adding, hold._state.db = False, connection.alias
    user_id, balance, frozen = values[len(names) : len(names) + 3]
    account = Account(pk=hold.account_id, user_id=user_id, balance=balance, frozen=frozen)
    account.updated_at = now
    hold.account = account
    return hold


@functools.cache
def _settle_in_one_sql(status: str, ctes: str = "", seq_sql: str = "") -> tuple[str, list]:
    """Settle a held hold (by public id) in one statement (``_settle_ctes``); ``ctes`` may
    record the event too."""
    settle, given = _settle_ctes(status, "%s", "", ("s", "m", "e"))
    sql = (
        f"WITH {settle}{', ' + ctes if ctes else ''} "  # noqa: S608
        f"SELECT s.*, m.user_id, m.balance, m.frozen, {seq_sql or 'NULL'} "
        "FROM s CROSS JOIN m CROSS JOIN e"
    )
    return sql, given


@dataclass(frozen=True)
class SettleInStatement:
    """A whole-hold confirm lent to a caller's statement (``hold_confirm_in_statement``).

    Put ``ctes`` (with ``params``, in that place) into the statement's ``WITH`` list after the
    CTEs that ``key_sql`` and ``after_sql`` read, and select ``columns`` (``width`` values);
    once the statement ran, inside ``events_batched``, pass them to ``settled``.
    """

    ctes: str
    params: list
    columns: str
    width: int
    at: datetime
    settled_name: str

    def settled(self, values: tuple | list, *, raise_event: bool = True) -> Hold | None:
        """The confirmed hold (its account with the new figures), its event raised (unless the
        caller's statement recorded it: ``event_sql``); None when the statement confirmed
        nothing (the hold was not held, or overdue)."""
        if values[0] is None:
            return None
        hold = _settled_hold(values, self.at)
        if raise_event:
            _emit(hold.account, status="deducted", points=hold.points, hold=hold)
        return hold

    @property
    def event_sql(self) -> tuple[str, str]:
        """(event type, payload SQL over the CTEs): the confirm's event, for a caller that
        records it in its own statement and publishes ``event_payload(hold)``."""
        return EVENT_TYPE, _payload_sql("wallet_settled", "wallet_moved", "deducted")

    @staticmethod
    def event_payload(hold: Hold) -> dict:
        return _payload(hold.account, status="deducted", points=hold.points, hold=hold)


def hold_confirm_in_statement(*, key_sql: str, after_sql: str = "") -> SettleInStatement:
    """CTEs that confirm, inside the caller's own statement (PostgreSQL), all of a held,
    unexpired hold whose public id the SQL expression ``key_sql`` gives (over the caller's
    earlier CTEs); its entry is appended in the same statement and its ``wallet.points`` event
    is raised by ``settled``, so the caller runs it inside ``events_batched``. ``after_sql``: a
    condition the hold's update waits for, to keep the caller's lock order. The CTE names start
    with ``wallet_``. Only our own SQL is interpolated; values are parameters."""
    names = ("wallet_settled", "wallet_moved", "wallet_entry")
    ctes, given = _settle_ctes(HoldStatus.CONFIRMED, key_sql, after_sql, names)
    now = timezone.now()
    return SettleInStatement(
        ctes=ctes,
        params=_settle_params(HoldStatus.CONFIRMED, now, [], given),
        columns=_settled_columns(names[0], names[1]),
        width=len(Hold._meta.concrete_fields) + 3,
        at=now,
        settled_name=names[0],
    )


@functools.cache
def _settled_columns(settled: str, moved: str) -> str:
    """The settled hold's columns, then the account's figures, as scalar subqueries: NULL (not
    missing) when nothing was settled. Built once per process."""
    hold_columns = [
        f"{settled}.{connection.ops.quote_name(f.column)}" for f in Hold._meta.concrete_fields
    ]
    account_columns = [f"{moved}.{column}" for column in ("user_id", "balance", "frozen")]
    return ", ".join(
        [f"(SELECT {column} FROM {settled})" for column in hold_columns]  # noqa: S608
        + [f"(SELECT {column} FROM {moved})" for column in account_columns]  # noqa: S608
    )


def _settle_in_one(hold_id: str, status: str) -> Hold | None:
    """The settled hold (its ``account`` with the new figures), or None when nothing was
    settled here: not PostgreSQL, or the hold is not held (or, to confirm, overdue)."""
    if connection.vendor != "postgresql" or not isinstance(hold_id, str):
        return None
    confirm = status == HoldStatus.CONFIRMED
    word = "deducted" if confirm else "released"
    now = timezone.now()
    recorded = _statement_event("s", "m", word)
    sql, given = _settle_in_one_sql(
        status, recorded.ctes if recorded else "", recorded.seq_sql if recorded else ""
    )
    params = _settle_params(status, now, [hold_id], given)
    if recorded is not None:
        params += recorded.params
    # With the event in the statement, it is the whole change: no transaction block of its own.
    block = contextlib.nullcontext() if recorded else transaction.atomic(savepoint=False)
    with block:
        row = _run_one(sql, params)
        if row is None:
            return None
        hold = _settled_hold(row, now)
        if recorded is not None:
            _emitted(recorded, row[-1], hold.account, status=word, hold=hold)
        else:
            _emit(hold.account, status=word, points=hold.points, hold=hold)
    return hold


def hold_release(*, hold: Hold) -> Hold:
    """Give the held points back. Idempotent (a released or expired hold is returned as it is);
    on a confirmed hold → 409 ``WALLET_HOLD_SETTLED``. One statement on PostgreSQL when held."""
    if settled := _settle_in_one(hold.public_id, HoldStatus.RELEASED):
        return _took(hold, settled)
    account = _account_of(hold)
    with transaction.atomic(savepoint=False):  # no savepoint: as in hold_confirm
        now = timezone.now()
        settled = _settle(hold, now=now, status=HoldStatus.RELEASED, deducted=0, due_by=None)
        if settled:
            _give_back(account, hold, type=EntryType.RELEASE, now=now)
            _emit(account, status="released", points=hold.points, hold=hold)
    if not settled:
        current = _as_it_is(hold, account)
        if current.status == HoldStatus.CONFIRMED:
            raise AppError(codes.WALLET_HOLD_SETTLED, "This hold was confirmed.")
        return current
    hold.status, hold.deducted, hold.released = HoldStatus.RELEASED, 0, hold.points
    hold.settled_at = hold.updated_at = now
    hold.account = account
    return hold


def _give_back(account: Account, hold: Hold, *, type: str, now: datetime) -> None:
    entry = _hold_entry(hold, type=type, points=0, amount=hold.points)
    _apply(account, balance=hold.points, frozen=-hold.points, entries=[entry], now=now)


def hold_extend(*, hold: Hold, expires_at: datetime) -> bool:
    """Make a held hold last at least until ``expires_at``; True when it now does.

    One guarded update: it moves ``expires_at`` only later, and only while the hold is held and
    not yet overdue (an overdue hold can no longer be confirmed and is not revived). False when
    the hold is settled or overdue. The caller (``tasks``) extends a task's hold whenever the
    task's deadline moves, so the hold outlives the task (docs/adr/0011-money-holes.md).
    """
    now = timezone.now()
    moved = Hold.objects.filter(
        pk=hold.pk, status=HoldStatus.HELD, expires_at__gt=now, expires_at__lt=expires_at
    ).update(expires_at=expires_at, updated_at=now)
    if (
        moved
        or Hold.objects.filter(
            pk=hold.pk, status=HoldStatus.HELD, expires_at__gte=expires_at, expires_at__gt=now
        ).exists()
    ):
        hold.expires_at = max(hold.expires_at, expires_at)
        return True
    return False


def hold_outlive(*, hold_id: str, expires_at: datetime) -> bool:
    """``hold_extend`` by the hold's public id, in one statement: True when the hold is held, not
    overdue, and now lasts at least until ``expires_at`` (it is only ever moved later)."""
    now = timezone.now()
    return (
        Hold.objects.filter(public_id=hold_id, status=HoldStatus.HELD, expires_at__gt=now).update(
            expires_at=Greatest(F("expires_at"), Value(expires_at)), updated_at=now
        )
        == 1
    )


def hold_outlive_in_statement(
    *, key_sql: str, after_sql: str, expires_at: datetime, name: str = "wallet_outlived"
) -> tuple[str, list]:
    """``hold_outlive`` lent to a caller's statement (PostgreSQL): a CTE named ``name`` that
    moves the held, not overdue hold whose public id the SQL expression ``key_sql`` gives (over
    the caller's earlier CTEs) to last at least until ``expires_at``, once the condition
    ``after_sql`` holds, and returns its id: no row when the hold can no longer be charged.
    Returns (the CTE text, its parameters, in that place). Only our own SQL is interpolated."""
    now = timezone.now()
    table = connection.ops.quote_name(Hold._meta.db_table)
    cte = (
        f"{name} AS (UPDATE {table} h SET expires_at = GREATEST(h.expires_at, %s), "  # noqa: S608
        f"updated_at = %s WHERE h.public_id = {key_sql} AND h.status = %s "
        f"AND h.expires_at > %s AND {after_sql} RETURNING h.id)"
    )
    return cte, [expires_at, now, HoldStatus.HELD, now]


# Hooks that name the holds whose work is still live (the tasks app registers one): expiry
# leaves those to whoever settles the work. The wallet imports no app above it.
_live_hold_checks: list[Callable[[list[str]], set[str]]] = []


def register_live_hold_check(check: Callable[[list[str]], set[str]]) -> None:
    """``check(hold_ids)`` → the ids among them whose work is still live (never expired)."""
    if check not in _live_hold_checks:
        _live_hold_checks.append(check)


def _live_holds(batch: list[Hold]) -> set[str]:
    ids = [hold.public_id for hold in batch]
    live: set[str] = set()
    for check in _live_hold_checks:
        live |= check(ids)
    return live


def holds_expire(*, now: datetime | None = None, batch_size: int = 500) -> int:
    """Release every hold still held at ``now`` past its ``expires_at``, once (entry ``expire``).

    One short transaction per hold; a hold settled meanwhile by someone else is left alone, and
    so is a hold whose work is still live (a registered check says so): its work settles it.
    Returns how many holds this call expired.
    """
    due_by = now or timezone.now()
    expired, last_pk = 0, 0
    while True:
        batch = list(
            Hold.objects.filter(status=HoldStatus.HELD, expires_at__lte=due_by, pk__gt=last_pk)
            .select_related("account")
            .order_by("pk")[:batch_size]
        )
        if not batch:
            return expired
        live = _live_holds(batch)
        for hold in batch:
            if hold.public_id not in live:
                expired += _expire_one(hold, due_by=due_by)
        last_pk = batch[-1].pk


def _expire_one(hold: Hold, *, due_by: datetime) -> int:
    with transaction.atomic():
        now = timezone.now()  # entries carry the real time, even when due_by is another
        if not _settle(hold, now=now, status=HoldStatus.EXPIRED, deducted=0, due_by=due_by):
            return 0
        _give_back(hold.account, hold, type=EntryType.EXPIRE, now=now)
        _emit(hold.account, status="expired", points=hold.points, hold=hold)
    return 1
