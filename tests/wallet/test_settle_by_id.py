"""A service settles its own hold by id (``hold_confirm_by_id`` / ``hold_release_by_id``).

On PostgreSQL a held hold is settled, its account moved and its entry written in one statement
(as ``hold_confirm`` of a whole hold and ``hold_release`` do); every other case takes the object
path. Either way the ledger, the account, the events and the
refusals are exactly those of ``hold_confirm`` / ``hold_release``.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from podi.errors import AppError
from tests.conftest import make_user
from tests.wallet.conftest import wallet_snapshot
from tests.wallet.invariants import assert_wallet_invariants
from tests.wallet.test_concurrency import run_threads
from wallet.models import Account, Hold, LedgerEntry
from wallet.services import (
    hold_confirm,
    hold_confirm_by_id,
    hold_freeze,
    hold_release,
    hold_release_by_id,
    wallet_grant,
)

_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")


def _entries(user) -> list[tuple]:
    return [
        (e.type, e.points, e.amount, e.balance_after, e.frozen_after, e.task_id, e.action)
        for e in LedgerEntry.objects.filter(account__user=user).order_by("id")
    ]


def _funded_hold(user) -> Hold:
    """500 points granted, two holds frozen: the first (120 points) is returned."""
    wallet_grant(user=user, points=500, reference=f"seed-{user.pk}")
    hold, _ = hold_freeze(user=user, task_id="tsk_a", points=120, action="txt2img", channel="task")
    hold_freeze(user=user, task_id="tsk_b", points=30)
    return hold


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["confirm", "release"])
def test_by_id_writes_what_the_object_path_writes(
    kind, owner, teammate, django_capture_on_commit_callbacks, published
):
    by_object = {"confirm": hold_confirm, "release": hold_release}[kind]
    by_id = {"confirm": hold_confirm_by_id, "release": hold_release_by_id}[kind]
    results = {}
    for user, settle in ((owner, lambda h: by_object(hold=h)), (teammate, None)):
        hold = _funded_hold(user)
        start = len(published)
        with (
            CaptureQueriesContext(connection) as queries,
            django_capture_on_commit_callbacks(execute=True),
        ):
            settled = settle(hold) if settle else by_id(hold_id=hold.public_id)
        account = Account.objects.get(user=user)
        results[user.pk] = {
            "returned": (settled.status, settled.deducted, settled.released, settled.public_id),
            "returned account": (settled.account.balance, settled.account.frozen),
            "stored": Hold.objects.filter(pk=hold.pk)
            .values_list("status", "deducted", "released")
            .get(),
            "settled_at": settled.settled_at is not None,
            "account": (account.balance, account.frozen),
            "ledger": _entries(user),
            "events": [
                {k: v for k, v in e["payload"].items() if k != "holdId"} for e in published[start:]
            ],
            "statements": [q["sql"] for q in queries if not q["sql"].startswith(_CONTROL)],
        }
        assert [e["payload"]["holdId"] for e in published[start:]] == [hold.public_id]
        assert_wallet_invariants(user)
    ours, reference = results[teammate.pk], results[owner.pk]
    assert ours["returned"][:3] == reference["returned"][:3]
    assert {k: v for k, v in ours.items() if k not in ("returned", "statements")} == {
        k: v for k, v in reference.items() if k not in ("returned", "statements")
    }
    if connection.vendor == "postgresql":
        # Settle, account, entry and event in one; ``hold_confirm``/``hold_release`` of a whole
        # hold too (docs/adr/0023-money-moves-in-one-statement.md).
        assert len(ours["statements"]) == len(reference["statements"]) == 1
        assert "realtime_event" in ours["statements"][0]


@pytest.mark.django_db
def test_by_id_refuses_and_repeats_like_the_object_path(owner):
    wallet_grant(user=owner, points=500)
    confirmed, _ = hold_freeze(user=owner, task_id="a", points=120)
    released, _ = hold_freeze(user=owner, task_id="b", points=30)
    overdue, _ = hold_freeze(user=owner, task_id="c", points=40)
    Hold.objects.filter(pk=overdue.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert hold_confirm_by_id(hold_id=confirmed.public_id).status == "confirmed"
    assert hold_release_by_id(hold_id=released.public_id).status == "released"
    before = wallet_snapshot()
    # Repeats are no-ops; the other settlement is 409; an overdue hold is not charged.
    assert hold_confirm_by_id(hold_id=confirmed.public_id).deducted == 120
    assert hold_release_by_id(hold_id=released.public_id).released == 30
    for call, hold_id, code in (
        (hold_confirm_by_id, released.public_id, "WALLET_HOLD_SETTLED"),
        (hold_release_by_id, confirmed.public_id, "WALLET_HOLD_SETTLED"),
        (hold_confirm_by_id, overdue.public_id, "WALLET_HOLD_EXPIRED"),
        (hold_confirm_by_id, "hold_unknown", "WALLET_HOLD_NOT_FOUND"),
        (hold_release_by_id, "hold_unknown", "WALLET_HOLD_NOT_FOUND"),
    ):
        with pytest.raises(AppError) as caught:
            call(hold_id=hold_id)
        assert caught.value.code == code
    assert hold_confirm_by_id(hold_id=overdue.public_id, expired_ok=True) is None
    assert wallet_snapshot() == before
    # An overdue hold can still be released (a failing task gives its points back).
    assert hold_release_by_id(hold_id=overdue.public_id).status == "released"
    account = assert_wallet_invariants(owner)
    assert (account.balance, account.frozen) == (380, 0)


@pytest.mark.django_db(transaction=True)
def test_one_hold_settled_by_id_from_sixteen_threads_is_settled_once():
    owner = make_user("racer-by-id")
    wallet_grant(user=owner, points=1000)
    hold, _ = hold_freeze(user=owner, task_id="tsk_race", points=120)
    results: list[str] = []

    def worker(index: int) -> None:
        try:
            if index % 2:
                results.append(hold_confirm_by_id(hold_id=hold.public_id).status)
            else:
                results.append(hold_release_by_id(hold_id=hold.public_id).status)
        except AppError as exc:
            results.append(exc.code)

    assert run_threads(worker) == []
    hold.refresh_from_db()
    winner = hold.status
    assert winner in ("confirmed", "released")
    assert Counter(results) == Counter({winner: 8, "WALLET_HOLD_SETTLED": 8})
    assert LedgerEntry.objects.filter(hold=hold).exclude(type="freeze").count() == 1
    account = assert_wallet_invariants(owner)
    assert (account.balance, account.frozen) == ((880, 0) if winner == "confirmed" else (1000, 0))
