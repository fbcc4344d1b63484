"""A freeze and a whole-hold settle, each with its ``wallet.points`` event, in one statement.

On PostgreSQL a freeze moves the points, inserts the hold, appends the entry and records the
event in one statement; outside a transaction that statement is the whole transaction (no
``BEGIN``/``COMMIT`` of its own), so the hot account row is locked only while it runs
(docs/adr/0023-money-moves-in-one-statement.md). The event it records is the one published,
with consecutive seqs among the user's other events. On SQLite the same calls take the
object path with the same answers.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from podi.errors import AppError
from podi.realtime.models import Event, EventCursor
from tests.wallet.conftest import wallet_snapshot
from tests.wallet.invariants import assert_wallet_invariants
from wallet.models import Account, Hold
from wallet.services import hold_confirm, hold_freeze, hold_release, wallet_grant

_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")
POSTGRESQL = connection.vendor == "postgresql"


def _stored(event_id: str) -> dict:
    row = Event.objects.get(public_id=event_id)
    return {"seq": row.seq, "taskId": row.task_public_id or None, "payload": row.payload}


def _as_published(event: dict) -> dict:
    return {"seq": event["seq"], "taskId": event["taskId"], "payload": event["payload"]}


@pytest.mark.django_db(transaction=True)
def test_freeze_and_confirm_are_one_statement_each_with_their_event(owner, published):
    wallet_grant(user=owner, points=100)
    granted = len(published)
    with CaptureQueriesContext(connection) as freezing:
        hold, created = hold_freeze(user=owner, task_id="ext-1", points=30, action="txt2img")
    with CaptureQueriesContext(connection) as confirming:
        settled = hold_confirm(hold=hold)
    if POSTGRESQL:
        for queries, tables in (
            (freezing, ("wallet_account", "wallet_hold", "wallet_ledgerentry")),
            (confirming, ("wallet_hold", "wallet_account", "wallet_ledgerentry")),
        ):
            # One statement, and no transaction block around it: it commits by itself.
            assert [q["sql"][:4] for q in queries] == ["WITH"]
            assert all(f'"{t}"' in queries[0]["sql"] for t in (*tables, "realtime_event"))
    assert created and (settled.status, settled.deducted) == ("confirmed", 30)
    assert (settled.account.balance, settled.account.frozen) == (70, 0)
    # What was published is what was recorded, on the seqs after the grant's event.
    events = published[granted:]
    assert [e["payload"]["status"] for e in events] == ["frozen", "deducted"]
    assert [e["payload"] for e in events] == [
        {"holdId": hold.public_id, "taskId": "ext-1", "status": "frozen", "points": 30, "balance": 70},
        {"holdId": hold.public_id, "taskId": "ext-1", "status": "deducted", "points": 30, "balance": 70},
    ]  # fmt: skip
    assert [_stored(e["id"]) for e in events] == [_as_published(e) for e in events]
    seqs = [e["seq"] for e in published]
    assert seqs == list(range(1, len(seqs) + 1))
    assert EventCursor.objects.get(user=owner).last_seq == len(seqs)
    assert_wallet_invariants(owner)


@pytest.mark.django_db(transaction=True)
def test_a_release_without_a_task_reference_records_no_task(owner, published):
    wallet_grant(user=owner, points=10)
    hold, _ = hold_freeze(user=owner, task_id="", points=4)
    released = hold_release(hold=hold)
    assert released.status == "released" and released.account.balance == 10
    events = published[-2:]
    assert [e["payload"] for e in events] == [
        {"holdId": hold.public_id, "status": "frozen", "points": 4, "balance": 6},
        {"holdId": hold.public_id, "status": "released", "points": 4, "balance": 10},
    ]
    assert all(e["taskId"] is None for e in events)
    assert [_stored(e["id"]) for e in events] == [_as_published(e) for e in events]
    assert_wallet_invariants(owner)


@pytest.mark.django_db(transaction=True)
def test_refusals_outside_a_transaction_commit_nothing(owner, outsider, published):
    wallet_grant(user=owner, points=10)
    before, events_before = wallet_snapshot(), Event.objects.count()
    with pytest.raises(AppError) as caught:
        hold_freeze(user=owner, task_id="big", points=11)
    assert (caught.value.code, caught.value.details) == (
        "WALLET_INSUFFICIENT",
        {"balance": 10, "required": 11},
    )
    with pytest.raises(AppError) as caught:
        hold_freeze(user=outsider, task_id="t", points=1)  # no account yet
    assert caught.value.code == "WALLET_INSUFFICIENT"
    assert wallet_snapshot() == before and Event.objects.count() == events_before
    assert [e["payload"].get("status") for e in published].count("frozen") == 0


@pytest.mark.django_db(transaction=True)
def test_the_same_freeze_again_outside_a_transaction_is_the_same_hold(owner, published):
    wallet_grant(user=owner, points=50)
    first, created = hold_freeze(user=owner, task_id="again", points=20)
    frozen_events = len(published)
    again, created_again = hold_freeze(user=owner, task_id="again", points=20)
    assert (created, created_again, again.pk) == (True, False, first.pk)
    assert again.account.balance == 30 and again.account.frozen == 20
    with pytest.raises(AppError) as caught:
        hold_freeze(user=owner, task_id="again", points=21)
    assert caught.value.code == "WALLET_HOLD_CONFLICT"
    assert len(published) == frozen_events  # the repeat raised no second event
    assert Hold.objects.filter(task_id="again").count() == 1
    assert_wallet_invariants(owner)


@pytest.mark.django_db
def test_inside_a_callers_transaction_a_duplicate_leaves_it_usable(owner):
    wallet_grant(user=owner, points=50)
    with transaction.atomic():
        hold_freeze(user=owner, task_id="dup", points=5)
        with pytest.raises(AppError) as caught:
            hold_freeze(user=owner, task_id="dup", points=6)
        assert caught.value.code == "WALLET_HOLD_CONFLICT"
        # The caller's transaction goes on: the savepoint took only the refused statement.
        hold, created = hold_freeze(user=owner, task_id="dup-2", points=7)
    assert created and hold.account.balance == 38
    assert_wallet_invariants(owner)


@pytest.mark.django_db(transaction=True)
def test_a_repeat_is_answered_as_a_repeat_when_the_balance_is_spent(owner):
    # With nothing left to move, a repeat of a held task must still be the same hold (or 409),
    # never 402 (found by the state machine when the statement moved the account first).
    wallet_grant(user=owner, points=5)
    first, _ = hold_freeze(user=owner, task_id="all-of-it", points=5)
    again, created = hold_freeze(user=owner, task_id="all-of-it", points=5)
    assert (again.pk, created) == (first.pk, False)
    assert (again.account.balance, again.account.frozen) == (0, 5)
    with pytest.raises(AppError) as caught:
        hold_freeze(user=owner, task_id="all-of-it", points=6)
    assert caught.value.code == "WALLET_HOLD_CONFLICT"
    with pytest.raises(AppError) as caught:
        hold_freeze(user=owner, task_id="another", points=1)
    assert caught.value.code == "WALLET_INSUFFICIENT"
    assert_wallet_invariants(owner)


@pytest.mark.skipif(not POSTGRESQL, reason="PostgreSQL's row locks (SQLite has one writer)")
@pytest.mark.django_db(transaction=True)
def test_a_repeat_freeze_waits_for_its_tasks_settle_without_holding_the_account(owner):
    # Every settle takes the hold's row (and so its (account, task) key), then the account's
    # row. A repeat freeze racing it must take them in the same order; when it took the account
    # first, the two deadlocked (found by the hot-account concurrency test). The settle here is
    # a transaction that stops between its two rows, so the race is not left to chance.
    wallet_grant(user=owner, points=100)
    hold, _ = hold_freeze(user=owner, task_id="raced", points=30)
    settle_holds_the_hold = threading.Event()
    failures: list[BaseException] = []

    def settle() -> None:
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    # Were there a deadlock, the settle would see it first and be its victim.
                    cursor.execute("SET LOCAL deadlock_timeout = '20ms'")
                Hold.objects.filter(pk=hold.pk).update(status="released", released=30)
                settle_holds_the_hold.set()
                _wait_for_a_lock_wait()  # the repeat freeze now waits on the hold's key
                Account.objects.filter(pk=hold.account_id).update(
                    balance=F("balance") + 30, frozen=F("frozen") - 30
                )
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
        finally:
            connection.close()

    settler = threading.Thread(target=settle)
    settler.start()
    assert settle_holds_the_hold.wait(10)
    again, created = hold_freeze(user=owner, task_id="raced", points=30)
    settler.join(10)
    assert failures == []
    assert (again.pk, created, again.status) == (hold.pk, False, "released")
    assert (again.account.balance, again.account.frozen) == (100, 0)


def _wait_for_a_lock_wait(timeout: float = 10.0) -> None:
    """Until another backend waits on a lock (PostgreSQL's view of lock waits)."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND pid <> pg_backend_pid() AND datname = current_database()"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the repeat freeze never waited on a lock")
