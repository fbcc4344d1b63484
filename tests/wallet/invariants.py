"""Invariants 1–2 of docs/architecture.md §4, checked exactly against the database. Reusable by any test:

from tests.wallet.invariants import assert_wallet_invariants
assert_wallet_invariants(account)          # or assert_wallet_invariants(user)
"""

from __future__ import annotations

from collections import Counter, defaultdict

from wallet.models import Account, EntryType, Hold, HoldStatus, LedgerEntry

# How each entry type moves (balance, frozen) by its amount; grant/adjust move balance by points.
_MOVES = {
    EntryType.FREEZE: (-1, +1),
    EntryType.CONFIRM: (0, -1),
    EntryType.RELEASE: (+1, -1),
    EntryType.EXPIRE: (+1, -1),
}


def assert_wallet_invariants(account_or_user) -> Account:
    """Invariant 1 (no negative amounts, frozen = Σ held holds, balance + frozen = Σ entry points,
    every entry's after-values equal the account right after it) and invariant 2 (every hold
    settled at most once, with exactly the entries its status calls for). Returns the account."""
    if isinstance(account_or_user, Account):
        account = Account.objects.get(pk=account_or_user.pk)
    else:
        account = Account.objects.get(user=account_or_user)
    holds = {h.pk: h for h in Hold.objects.filter(account=account)}
    entries = list(LedgerEntry.objects.filter(account=account).order_by("id"))

    # Invariant 1
    assert account.balance >= 0, f"negative balance {account.balance}"
    assert account.frozen >= 0, f"negative frozen {account.frozen}"
    held = sum(h.points for h in holds.values() if h.status == HoldStatus.HELD)
    assert account.frozen == held, f"frozen {account.frozen} != Σ held holds {held}"
    total = sum(e.points for e in entries)
    assert account.balance + account.frozen == total, (
        f"balance + frozen = {account.balance + account.frozen} != Σ entry points {total}"
    )
    balance = frozen = 0
    for entry in entries:
        if entry.type in (EntryType.GRANT, EntryType.ADJUST):
            assert entry.hold_id is None, f"{entry} names a hold"
            assert entry.amount == abs(entry.points), f"{entry}: amount {entry.amount}"
            balance += entry.points
        else:
            assert entry.hold_id is not None, f"{entry} names no hold"
            db, df = _MOVES[entry.type]
            expected_points = -entry.amount if entry.type == EntryType.CONFIRM else 0
            assert entry.points == expected_points, f"{entry}: points {entry.points}"
            balance += db * entry.amount
            frozen += df * entry.amount
        assert balance >= 0 and frozen >= 0, f"{entry} drove the account negative"
        assert (entry.balance_after, entry.frozen_after) == (balance, frozen), (
            f"{entry}: after ({entry.balance_after}, {entry.frozen_after}) != replayed "
            f"({balance}, {frozen})"
        )
    assert (balance, frozen) == (account.balance, account.frozen), (
        f"replayed ledger ({balance}, {frozen}) != account ({account.balance}, {account.frozen})"
    )

    # Invariant 2
    by_hold: dict[int, list[LedgerEntry]] = defaultdict(list)
    for entry in entries:
        if entry.hold_id is not None:
            by_hold[entry.hold_id].append(entry)
    assert set(by_hold) <= set(holds), "an entry names another account's hold"
    for pk, hold in holds.items():
        kinds = Counter(e.type for e in by_hold.get(pk, []))
        amounts = defaultdict(int)
        for e in by_hold.get(pk, []):
            amounts[e.type] += e.amount
        assert kinds[EntryType.FREEZE] == 1 and amounts[EntryType.FREEZE] == hold.points, (
            f"{hold}: freeze entries {kinds[EntryType.FREEZE]}"
        )
        if hold.status == HoldStatus.HELD:
            assert (hold.deducted, hold.released) == (0, 0), f"{hold}: held but settled figures"
            assert sum(kinds.values()) == 1, f"{hold}: held but has settlement entries {kinds}"
            assert hold.settled_at is None
        elif hold.status == HoldStatus.CONFIRMED:
            assert hold.deducted + hold.released == hold.points, f"{hold}: figures don't add up"
            assert kinds[EntryType.CONFIRM] == 1, f"{hold}: {kinds[EntryType.CONFIRM]} confirms"
            assert amounts[EntryType.CONFIRM] == hold.deducted
            assert kinds[EntryType.RELEASE] == (1 if hold.released else 0)
            assert amounts[EntryType.RELEASE] == hold.released
            assert kinds[EntryType.EXPIRE] == 0
        else:
            settled_by = (
                EntryType.RELEASE if hold.status == HoldStatus.RELEASED else EntryType.EXPIRE
            )
            assert (hold.deducted, hold.released) == (0, hold.points), f"{hold}: figures"
            assert kinds == Counter({EntryType.FREEZE: 1, settled_by: 1}), f"{hold}: {kinds}"
            assert amounts[settled_by] == hold.points
        if hold.status != HoldStatus.HELD:
            assert hold.settled_at is not None, f"{hold}: settled without settled_at"
    return account
