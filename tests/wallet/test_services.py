from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from podi.errors import AppError
from tests.wallet.conftest import wallet_snapshot
from tests.wallet.invariants import assert_wallet_invariants
from wallet.models import Account, EntryType, Hold, HoldStatus, LedgerEntry
from wallet.selectors import account_for_user, account_statistics, hold_get, ledger_entries
from wallet.services import (
    hold_confirm,
    hold_extend,
    hold_freeze,
    hold_release,
    holds_expire,
    wallet_adjust,
    wallet_grant,
)

pytestmark = pytest.mark.django_db


def entries(user, type=None):
    queryset = LedgerEntry.objects.filter(account__user=user).order_by("id")
    return list(queryset.filter(type=type) if type else queryset)


def account(user):
    return Account.objects.get(user=user)


def test_grant_freeze_confirm_exact_numbers(owner, django_capture_on_commit_callbacks, published):
    with django_capture_on_commit_callbacks(execute=True):
        grant = wallet_grant(user=owner, points=500, reason="welcome", reference="signup")
    assert (grant.type, grant.points, grant.amount) == ("grant", 500, 500)
    assert (grant.balance_after, grant.frozen_after) == (500, 0)
    assert grant.public_id.startswith("txn_")
    assert grant.account.balance == 500

    with django_capture_on_commit_callbacks(execute=True):
        hold, created = hold_freeze(
            user=owner, task_id="tsk_1", points=120, action="txt2img", channel="task"
        )
    assert created is True
    assert hold.public_id.startswith("hold_") and len(hold.public_id) == 29
    assert (hold.status, hold.points, hold.deducted, hold.released) == ("held", 120, 0, 0)
    assert (account(owner).balance, account(owner).frozen) == (380, 120)
    freeze = entries(owner, "freeze")
    assert [(e.points, e.amount, e.balance_after, e.frozen_after) for e in freeze] == [
        (0, 120, 380, 120)
    ]
    assert (freeze[0].hold_id, freeze[0].task_id, freeze[0].action, freeze[0].channel) == (
        hold.pk,
        "tsk_1",
        "txt2img",
        "task",
    )
    assert hold.expires_at - hold.created_at == timedelta(seconds=3600)

    with django_capture_on_commit_callbacks(execute=True):
        confirmed = hold_confirm(hold=hold)
    assert (confirmed.status, confirmed.deducted, confirmed.released) == ("confirmed", 120, 0)
    assert (confirmed.account.balance, confirmed.account.frozen) == (380, 0)
    assert (account(owner).balance, account(owner).frozen) == (380, 0)
    confirms = entries(owner, "confirm")
    assert [(e.points, e.amount, e.balance_after, e.frozen_after) for e in confirms] == [
        (-120, 120, 380, 0)
    ]
    assert entries(owner, "release") == []
    assert [e["payload"] for e in published] == [
        {"holdId": None, "status": "granted", "points": 500, "balance": 500},
        {"holdId": hold.public_id, "taskId": "tsk_1", "status": "frozen", "points": 120, "balance": 380},
        {"holdId": hold.public_id, "taskId": "tsk_1", "status": "deducted", "points": 120, "balance": 380},
    ]  # fmt: skip
    assert [(e["userId"], e["taskId"]) for e in published] == [
        (owner.pk, None),
        (owner.pk, "tsk_1"),
        (owner.pk, "tsk_1"),
    ]
    assert_wallet_invariants(owner)


def test_partial_confirm_charges_part_and_gives_the_rest_back(owner):
    wallet_grant(user=owner, points=500)
    hold, _ = hold_freeze(user=owner, task_id="tsk_p", points=120)
    hold = hold_confirm(hold=hold, points=100)
    assert (hold.status, hold.deducted, hold.released) == ("confirmed", 100, 20)
    assert (account(owner).balance, account(owner).frozen) == (400, 0)
    tail = entries(owner)[-2:]
    assert [(e.type, e.points, e.amount, e.balance_after, e.frozen_after) for e in tail] == [
        ("confirm", -100, 100, 380, 20),
        ("release", 0, 20, 400, 0),
    ]
    assert_wallet_invariants(owner)


def test_confirm_zero_releases_everything_but_counts_as_confirmed(owner):
    wallet_grant(user=owner, points=50)
    hold, _ = hold_freeze(user=owner, task_id="t", points=50)
    hold = hold_confirm(hold=hold, points=0)
    assert (hold.status, hold.deducted, hold.released) == ("confirmed", 0, 50)
    assert (account(owner).balance, account(owner).frozen) == (50, 0)
    assert_wallet_invariants(owner)


def test_confirm_more_than_held_is_refused_and_changes_nothing(owner):
    wallet_grant(user=owner, points=500)
    hold, _ = hold_freeze(user=owner, task_id="t", points=120)
    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        hold_confirm(hold=hold, points=121)
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.details == {"fields": {"points": ["At most the 120 points held."]}}
    assert wallet_snapshot() == before


def test_freeze_is_idempotent_per_user_and_task(owner, teammate):
    wallet_grant(user=owner, points=500)
    wallet_grant(user=teammate, points=500)
    first, created = hold_freeze(user=owner, task_id="tsk_same", points=120)
    again, created_again = hold_freeze(user=owner, task_id="tsk_same", points=120)
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    assert (again.account.balance, again.account.frozen) == (380, 120)
    assert len(entries(owner, "freeze")) == 1
    # The same task id on another account is another hold.
    other, created_other = hold_freeze(user=teammate, task_id="tsk_same", points=120)
    assert created_other and other.pk != first.pk

    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        hold_freeze(user=owner, task_id="tsk_same", points=121)
    assert (caught.value.code, caught.value.status) == ("WALLET_HOLD_CONFLICT", 409)
    assert caught.value.details == {"holdId": first.public_id, "points": 120}
    assert wallet_snapshot() == before
    # Still the same hold after it was settled.
    hold_confirm(hold=first)
    settled, created = hold_freeze(user=owner, task_id="tsk_same", points=120)
    assert (settled.pk, settled.status, created) == (first.pk, "confirmed", False)
    assert_wallet_invariants(owner)


def test_freeze_insufficient_writes_nothing(owner, django_capture_on_commit_callbacks, published):
    wallet_grant(user=owner, points=100)
    before = wallet_snapshot()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(AppError) as caught:
            hold_freeze(user=owner, task_id="t", points=101)
    assert (caught.value.code, caught.value.status) == ("WALLET_INSUFFICIENT", 402)
    assert caught.value.details == {"balance": 100, "required": 101}
    assert wallet_snapshot() == before
    assert callbacks == [] and published == []


def test_freeze_for_a_user_without_an_account_is_insufficient(outsider):
    with pytest.raises(AppError) as caught:
        hold_freeze(user=outsider, task_id="t", points=1)
    assert caught.value.code == "WALLET_INSUFFICIENT"
    assert Hold.objects.count() == 0 and LedgerEntry.objects.count() == 0
    assert not Account.objects.filter(user=outsider).exists()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"points": 0}, "points"),
        ({"points": -5}, "points"),
        ({"points": True}, "points"),
        ({"points": "12"}, "points"),
        ({"points": 10**13}, "points"),
        ({"points": 5, "ttl_seconds": 0}, "ttlSeconds"),
        ({"points": 5, "task_id": "x" * 65}, "taskId"),
    ],
)
def test_freeze_bad_input(owner, kwargs, field):
    wallet_grant(user=owner, points=100)
    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        hold_freeze(user=owner, **{"task_id": "t", **kwargs})
    assert caught.value.code == "VALIDATION_ERROR"
    assert list(caught.value.details["fields"]) == [field]
    assert wallet_snapshot() == before


def test_confirm_and_release_repeat_are_no_ops(owner):
    wallet_grant(user=owner, points=500)
    confirmed, _ = hold_freeze(user=owner, task_id="a", points=120)
    released, _ = hold_freeze(user=owner, task_id="b", points=30)
    hold_confirm(hold=confirmed)
    hold_release(hold=released)
    before = wallet_snapshot()
    again = hold_confirm(hold=confirmed)
    assert (again.status, again.deducted, again.released) == ("confirmed", 120, 0)
    assert hold_confirm(hold=confirmed, points=10).deducted == 120  # settled: still a no-op
    again = hold_release(hold=released)
    assert (again.status, again.released) == ("released", 30)
    assert wallet_snapshot() == before
    assert (account(owner).balance, account(owner).frozen) == (380, 0)
    assert_wallet_invariants(owner)


def test_confirm_after_release_and_release_after_confirm_conflict(owner):
    wallet_grant(user=owner, points=500)
    confirmed, _ = hold_freeze(user=owner, task_id="a", points=120)
    released, _ = hold_freeze(user=owner, task_id="b", points=30)
    hold_confirm(hold=confirmed)
    hold_release(hold=released)
    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        hold_confirm(hold=released)
    assert (caught.value.code, caught.value.status) == ("WALLET_HOLD_SETTLED", 409)
    with pytest.raises(AppError) as caught:
        hold_release(hold=confirmed)
    assert (caught.value.code, caught.value.status) == ("WALLET_HOLD_SETTLED", 409)
    assert wallet_snapshot() == before


def test_release_gives_everything_back(owner, django_capture_on_commit_callbacks, published):
    wallet_grant(user=owner, points=500)
    hold, _ = hold_freeze(user=owner, task_id="t", points=120)
    with django_capture_on_commit_callbacks(execute=True):
        hold = hold_release(hold=hold)
    assert (hold.status, hold.deducted, hold.released) == ("released", 0, 120)
    assert (account(owner).balance, account(owner).frozen) == (500, 0)
    last = entries(owner)[-1]
    assert (last.type, last.points, last.amount, last.balance_after, last.frozen_after) == (
        "release",
        0,
        120,
        500,
        0,
    )
    assert published[-1]["payload"] == {
        "holdId": hold.public_id,
        "taskId": "t",
        "status": "released",
        "points": 120,
        "balance": 500,
    }


def test_an_overdue_hold_cannot_be_confirmed_and_expires_exactly_once(
    owner, django_capture_on_commit_callbacks, published
):
    wallet_grant(user=owner, points=500)
    hold, _ = hold_freeze(user=owner, task_id="t", points=120, ttl_seconds=60)
    fresh, _ = hold_freeze(user=owner, task_id="u", points=10, ttl_seconds=3600)
    Hold.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        hold_confirm(hold=hold)
    assert (caught.value.code, caught.value.status) == ("WALLET_HOLD_EXPIRED", 409)
    assert wallet_snapshot() == before

    with django_capture_on_commit_callbacks(execute=True):
        assert holds_expire() == 1
        assert holds_expire() == 0
    hold.refresh_from_db()
    assert (hold.status, hold.released, hold.deducted) == ("expired", 120, 0)
    assert Hold.objects.get(pk=fresh.pk).status == "held"
    assert (account(owner).balance, account(owner).frozen) == (490, 10)
    expires = entries(owner, "expire")
    assert [(e.hold_id, e.points, e.amount, e.balance_after, e.frozen_after) for e in expires] == [
        (hold.pk, 0, 120, 490, 10)
    ]
    assert [e["payload"]["status"] for e in published] == ["expired"]

    with pytest.raises(AppError) as caught:
        hold_confirm(hold=hold)
    assert caught.value.code == "WALLET_HOLD_EXPIRED"
    # Releasing an expired hold is a no-op (a failing task may still try).
    assert hold_release(hold=hold).status == "expired"
    assert len(entries(owner, "expire")) == 1
    assert_wallet_invariants(owner)


def test_holds_expire_with_a_later_now_and_across_accounts(owner, teammate):
    for user in (owner, teammate):
        wallet_grant(user=user, points=100)
        hold_freeze(user=user, task_id="a", points=10, ttl_seconds=60)
        hold_freeze(user=user, task_id="b", points=20, ttl_seconds=600)
    assert holds_expire() == 0
    assert holds_expire(now=timezone.now() + timedelta(seconds=61)) == 2
    assert holds_expire(now=timezone.now() + timedelta(seconds=601)) == 2
    assert holds_expire(now=timezone.now() + timedelta(days=1)) == 0
    for user in (owner, teammate):
        assert (account(user).balance, account(user).frozen) == (100, 0)
        assert_wallet_invariants(user)
    # Entries are stamped with the real time, not the simulated one.
    assert LedgerEntry.objects.filter(created_at__gt=timezone.now()).count() == 0


def test_grant_is_idempotent_by_reference(owner, teammate):
    first = wallet_grant(user=owner, points=500, reference="order-1")
    again = wallet_grant(user=owner, points=500, reference="order-1")
    assert again.pk == first.pk
    assert account(owner).balance == 500
    assert len(entries(owner, "grant")) == 1
    # References are per account, and grants without a reference are never merged.
    wallet_grant(user=teammate, points=500, reference="order-1")
    wallet_grant(user=owner, points=5)
    wallet_grant(user=owner, points=5)
    assert account(owner).balance == 510
    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        wallet_grant(user=owner, points=400, reference="order-1")
    assert (caught.value.code, caught.value.status) == ("WALLET_GRANT_CONFLICT", 409)
    assert wallet_snapshot() == before


def test_adjust_is_signed_needs_a_reason_and_never_goes_below_zero(owner, staff):
    wallet_grant(user=owner, points=100)
    entry = wallet_adjust(user=owner, points=-30, reason="refund reversed", staff_user=staff)
    assert (entry.type, entry.points, entry.amount, entry.balance_after) == ("adjust", -30, 30, 70)
    assert (entry.reason, entry.created_by) == ("refund reversed", staff)
    wallet_adjust(user=owner, points=+5, reason="goodwill", staff_user=staff)
    assert account(owner).balance == 75
    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        wallet_adjust(user=owner, points=-76, reason="too much", staff_user=staff)
    assert (caught.value.code, caught.value.status) == ("WALLET_INSUFFICIENT", 402)
    for points, reason in [(0, "x"), (5, "  "), (5, "")]:
        with pytest.raises(AppError) as caught:
            wallet_adjust(user=owner, points=points, reason=reason, staff_user=staff)
        assert caught.value.code == "VALIDATION_ERROR"
    assert wallet_snapshot() == before
    # Frozen points are not the balance: an adjustment cannot take them.
    hold_freeze(user=owner, task_id="t", points=75)
    with pytest.raises(AppError):
        wallet_adjust(user=owner, points=-1, reason="x", staff_user=staff)
    assert_wallet_invariants(owner)


def test_selectors(owner, outsider):
    created = account_for_user(outsider)
    assert (created.balance, created.frozen) == (0, 0)
    assert account_for_user(outsider).pk == created.pk
    wallet_grant(user=owner, points=500)
    hold, _ = hold_freeze(user=owner, task_id="t", points=120)
    assert hold_get(hold_id=hold.public_id).pk == hold.pk
    assert hold_get(hold_id=hold.public_id, user=owner).pk == hold.pk
    for kwargs in ({"user": outsider}, {}):
        bad = hold.public_id if kwargs else "hold_nope"
        with pytest.raises(AppError) as caught:
            hold_get(hold_id=bad, **kwargs)
        assert (caught.value.code, caught.value.status) == ("WALLET_HOLD_NOT_FOUND", 404)
    listed = list(ledger_entries(account=account(owner)))
    assert [e.type for e in listed] == ["freeze", "grant"]
    assert [e.type for e in ledger_entries(account=account(owner), type="grant")] == ["grant"]


def test_statistics_agree_with_the_ledger(owner, staff):
    wallet_grant(user=owner, points=500)
    a, _ = hold_freeze(user=owner, task_id="a", points=120, action="txt2img")
    b, _ = hold_freeze(user=owner, task_id="b", points=120, action="txt2img")
    c, _ = hold_freeze(user=owner, task_id="c", points=50, action="upscale")
    d, _ = hold_freeze(user=owner, task_id="d", points=40, action="upscale")
    hold_confirm(hold=a)
    hold_confirm(hold=b, points=100)
    hold_confirm(hold=c)
    hold_release(hold=d)
    wallet_adjust(user=owner, points=-10, reason="fix", staff_user=staff)
    stats = account_statistics(account=account(owner))
    today = timezone.now().date()
    assert stats == {
        "balance": 500 - 120 - 100 - 50 - 10,
        "frozen": 0,
        "totalGranted": 500,
        "totalSpent": 270,
        "totalReleased": 60,
        "totalAdjusted": -10,
        "byAction": [
            {"action": "txt2img", "spent": 220, "count": 2},
            {"action": "upscale", "spent": 50, "count": 1},
        ],
        "byDay": [{"date": today, "spent": 270, "granted": 500}],
    }
    all_entries = entries(owner)
    assert stats["totalGranted"] == sum(e.points for e in all_entries if e.type == "grant")
    assert stats["totalSpent"] == -sum(e.points for e in all_entries if e.type == "confirm")
    assert stats["balance"] + stats["frozen"] == (
        stats["totalGranted"] - stats["totalSpent"] + stats["totalAdjusted"]
    )
    tomorrow = timezone.now() + timedelta(days=1)
    assert account_statistics(account=account(owner), since=tomorrow)["totalGranted"] == 0
    assert_wallet_invariants(owner)


def test_services_nest_inside_the_callers_transaction(owner):
    wallet_grant(user=owner, points=100)
    with pytest.raises(RuntimeError), transaction.atomic():
        hold_freeze(user=owner, task_id="t", points=60)
        raise RuntimeError("the caller's work failed")
    assert (account(owner).balance, Hold.objects.count()) == (100, 0)
    with transaction.atomic():
        hold, _ = hold_freeze(user=owner, task_id="t", points=60)
        hold_confirm(hold=hold)
    assert (account(owner).balance, account(owner).frozen) == (40, 0)


def test_database_constraints_are_the_last_line_of_defence(owner):
    wallet_grant(user=owner, points=10)
    acc = account(owner)
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.filter(pk=acc.pk).update(balance=-1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.filter(pk=acc.pk).update(frozen=-1)
    hold, _ = hold_freeze(user=owner, task_id="t", points=5)
    with pytest.raises(IntegrityError), transaction.atomic():
        Hold.objects.filter(pk=hold.pk).update(status=HoldStatus.CONFIRMED)  # no figures
    with pytest.raises(IntegrityError), transaction.atomic():
        Hold.objects.filter(pk=hold.pk).update(status=HoldStatus.RELEASED, released=4)
    with pytest.raises(IntegrityError), transaction.atomic():
        Hold.objects.create(account=acc, task_id="t", points=1, expires_at=timezone.now())
    with pytest.raises(IntegrityError), transaction.atomic():
        LedgerEntry.objects.create(
            account=acc, type=EntryType.GRANT, points=1, balance_after=-1, frozen_after=0
        )


def test_ledger_is_append_only(owner):
    entry = wallet_grant(user=owner, points=10)
    with pytest.raises(TypeError):
        entry.save()
    with pytest.raises(TypeError):
        entry.delete()
    with pytest.raises(TypeError):
        LedgerEntry.objects.filter(pk=entry.pk).update(points=11)
    with pytest.raises(TypeError):
        LedgerEntry.objects.filter(pk=entry.pk).delete()
    assert LedgerEntry.objects.get(pk=entry.pk).points == 10


def test_hold_extend_moves_only_later_and_only_while_held(owner):
    wallet_grant(user=owner, points=500)
    hold, _ = hold_freeze(user=owner, task_id="t", points=120, ttl_seconds=60)
    first = hold.expires_at
    later = first + timedelta(hours=2)
    assert hold_extend(hold=hold, expires_at=later) is True
    assert Hold.objects.get(pk=hold.pk).expires_at == later == hold.expires_at
    # Never earlier: an earlier time is already covered, and nothing moves.
    assert hold_extend(hold=hold, expires_at=first) is True
    assert Hold.objects.get(pk=hold.pk).expires_at == later
    assert (account(owner).balance, account(owner).frozen) == (380, 120)
    assert holds_expire(now=first + timedelta(hours=1)) == 0
    # An overdue hold is not revived; a settled one is not touched.
    Hold.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert hold_extend(hold=hold, expires_at=later + timedelta(hours=1)) is False
    assert Hold.objects.get(pk=hold.pk).expires_at < timezone.now()
    settled, _ = hold_freeze(user=owner, task_id="u", points=10)
    hold_release(hold=settled)
    assert hold_extend(hold=settled, expires_at=later) is False
    assert Hold.objects.get(pk=settled.pk).expires_at < later
    assert_wallet_invariants(owner)
    assert not LedgerEntry.objects.filter(account__user=owner, type="expire").exists()
