"""Many threads on one hot account; afterwards invariants 1–2 (docs/architecture.md §4) hold.

Runs on both databases: PostgreSQL (row locks; the full-size stress) and SQLite (IMMEDIATE
transactions; a smaller run of the same code, since SQLite serialises every writer).
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from django.db import connection

from podi.errors import AppError
from tests.conftest import make_user
from tests.wallet.invariants import assert_wallet_invariants
from wallet.models import Account, Hold, HoldStatus, LedgerEntry
from wallet.selectors import hold_get
from wallet.services import hold_confirm, hold_freeze, hold_release, holds_expire, wallet_grant

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 16
EXPECTED = {"WALLET_INSUFFICIENT", "WALLET_HOLD_SETTLED", "WALLET_HOLD_EXPIRED"}


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


def run_threads(target, count: int = THREADS) -> list[BaseException]:
    """Start ``count`` threads together; return whatever they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(index)
        except BaseException as exc:  # collected and asserted by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return errors


def test_random_freeze_confirm_release_expire_on_one_hot_account():
    owner = make_user("hot")
    granted = 3000
    wallet_grant(user=owner, points=granted)
    ops_per_thread = 40 if on_postgres() else 10
    holds: list[str] = []
    holds_lock = threading.Lock()
    outcomes: Counter[str] = Counter()

    def worker(index: int) -> None:
        rng = random.Random(index)
        for _ in range(ops_per_thread):
            op = rng.choices(["freeze", "confirm", "release", "expire"], [4, 3, 2, 1])[0]
            try:
                if op == "freeze" or not holds:
                    # Shared task ids make threads race on the same (user, task) too.
                    task_id = f"tsk_{rng.randrange(ops_per_thread * 4)}"
                    points = 10 + (sum(map(ord, task_id)) % 140)  # same task → same points
                    ttl = 1 if rng.random() < 0.3 else 3600
                    hold, _ = hold_freeze(
                        user=owner, task_id=task_id, points=points, ttl_seconds=ttl
                    )
                    with holds_lock:
                        holds.append(hold.public_id)
                    outcomes["freeze"] += 1
                elif op == "confirm":
                    hold = hold_get(hold_id=rng.choice(holds))
                    partial = rng.random() < 0.3
                    hold_confirm(hold=hold, points=rng.randint(0, hold.points) if partial else None)
                    outcomes["confirm"] += 1
                elif op == "release":
                    hold_release(hold=hold_get(hold_id=rng.choice(holds)))
                    outcomes["release"] += 1
                else:
                    outcomes["expired"] += holds_expire()
            except AppError as exc:
                if exc.code not in EXPECTED:
                    raise
                outcomes[exc.code] += 1

    errors = run_threads(worker)
    assert errors == []
    account = assert_wallet_invariants(owner)
    deducted = sum(Hold.objects.filter(account=account).values_list("deducted", flat=True))
    assert account.balance + account.frozen == granted - deducted
    statuses = Counter(Hold.objects.values_list("status", flat=True))
    # The mix really exercised every path.
    assert outcomes["freeze"] > 0 and outcomes["confirm"] > 0 and outcomes["release"] > 0
    assert statuses[HoldStatus.CONFIRMED] > 0 and statuses[HoldStatus.RELEASED] > 0
    # Whatever was left held expires now, exactly once.
    Hold.objects.filter(status=HoldStatus.HELD).update(expires_at=account.created_at)
    left = statuses[HoldStatus.HELD]
    assert holds_expire() == left and holds_expire() == 0
    account = assert_wallet_invariants(owner)
    assert account.frozen == 0


def test_one_hold_settled_by_sixteen_threads_at_once_is_settled_once():
    owner = make_user("racer")
    wallet_grant(user=owner, points=1000)
    hold, _ = hold_freeze(user=owner, task_id="tsk_race", points=120)
    results: list[str] = []

    def worker(index: int) -> None:
        try:
            if index % 2:
                results.append(hold_confirm(hold=hold, points=100).status)
            else:
                results.append(hold_release(hold=hold).status)
        except AppError as exc:
            results.append(exc.code)

    assert run_threads(worker) == []
    hold.refresh_from_db()
    # Whoever won, everyone else saw the settled hold: no-op for their own kind, 409 for the other.
    winner = hold.status
    assert winner in ("confirmed", "released")
    assert Counter(results) == Counter({winner: 8, "WALLET_HOLD_SETTLED": 8})
    settlements = LedgerEntry.objects.filter(hold=hold).exclude(type="freeze")
    assert settlements.count() == (2 if winner == "confirmed" else 1)
    account = assert_wallet_invariants(owner)
    assert (account.balance, account.frozen) == ((900, 0) if winner == "confirmed" else (1000, 0))


def test_concurrent_first_use_freeze_and_expiry():
    owner = make_user("fresh")
    # First use of an account by 16 threads at once: one account.
    run_threads(lambda i: wallet_grant(user=owner, points=100, reference=f"r{i % 4}"))
    assert Account.objects.filter(user=owner).count() == 1
    assert Account.objects.get(user=owner).balance == 400  # four distinct references

    created: list[bool] = []
    assert (
        run_threads(
            lambda i: created.append(hold_freeze(user=owner, task_id="tsk_same", points=50)[1])
        )
        == []
    )
    assert sorted(created) == [False] * 15 + [True]

    for index in range(10):
        hold_freeze(user=owner, task_id=f"t{index}", points=10, ttl_seconds=3600)
    Hold.objects.update(expires_at=Account.objects.get(user=owner).created_at)
    counts: list[int] = []
    assert run_threads(lambda i: counts.append(holds_expire()), count=8) == []
    assert sum(counts) == 11
    assert LedgerEntry.objects.filter(type="expire").count() == 11
    account = assert_wallet_invariants(owner)
    assert (account.balance, account.frozen) == (400, 0)
