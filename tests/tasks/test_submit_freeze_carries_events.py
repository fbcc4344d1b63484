"""A paid submit ends with its freeze, whose statement records the submit's events on PostgreSQL
(ADR 0034): the same events, in the same order, on consecutive seqs, published after the
commit, on every database; a refused freeze leaves nothing behind."""

from __future__ import annotations

import pytest

from podi.errors import AppError
from podi.realtime.models import Event, WebhookDelivery
from tasks.models import Task
from tasks.services import task_submit
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor
from wallet.models import Account, Hold

pytestmark = pytest.mark.django_db(transaction=True)


def _after(user, seq: int) -> list[tuple[int, str, dict]]:
    rows = Event.objects.filter(user=user, seq__gt=seq).order_by("seq")
    return [(e.seq, e.type, e.payload) for e in rows]


def _last_seq(user) -> int:
    return Event.objects.filter(user=user).order_by("-seq").values_list("seq", flat=True).first()


@pytest.mark.usefixtures("queued_submits")
def test_a_queued_paid_submit_records_frozen_then_queued(funded, published):
    make_ability("slow", [make_executor("gpu", "http://127.0.0.1:9")], graph=SLEEP_GRAPH,
                 schema=SLEEP_SCHEMA, points=7)  # fmt: skip
    start = _last_seq(funded)
    task = task_submit(user=funded, action="slow")
    recorded = _after(funded, start)
    assert [(t, p.get("status")) for _, t, p in recorded] == [
        ("wallet.points", "frozen"),
        ("task.status", "queued"),
    ]
    assert [seq for seq, _, _ in recorded] == [start + 1, start + 2]
    frozen, queued = recorded[0][2], recorded[1][2]
    hold = Hold.objects.get(task_id=task.public_id)
    assert frozen == {"holdId": hold.public_id, "status": "frozen", "points": 7,
                      "balance": 993, "taskId": task.public_id}  # fmt: skip
    assert queued == {"taskId": task.public_id, "status": "queued", "progress": 0}
    # Published after the commit as recorded: the same seqs, ids and payloads.
    mine = [e for e in published if e.get("taskId") == task.public_id]
    assert [(e["seq"], e["type"], e["payload"]) for e in mine] == recorded
    assert {e["id"] for e in mine} == set(
        Event.objects.filter(user=funded, seq__gt=start).values_list("public_id", flat=True)
    )


def test_a_paid_submit_that_starts_records_frozen_queued_running(comfy, funded, published):
    make_ability("invert", [make_executor("gpu", comfy.url)], points=5)
    start = _last_seq(funded)
    task = task_submit(user=funded, action="invert", params={"width": 8, "height": 8})
    assert task.status == "running"
    recorded = _after(funded, start)
    assert [(t, p.get("status")) for _, t, p in recorded] == [
        ("wallet.points", "frozen"),
        ("task.status", "queued"),
        ("task.status", "running"),
    ]
    assert [seq for seq, _, _ in recorded] == [start + 1, start + 2, start + 3]
    mine = [e for e in published if e.get("taskId") == task.public_id]
    assert [(e["seq"], e["type"]) for e in mine] == [(s, t) for s, t, _ in recorded]


@pytest.mark.usefixtures("queued_submits")
def test_a_submit_with_a_callback_for_queued_records_its_delivery(funded, published, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # a loopback receiver nobody calls in this test
    make_ability("slow", [make_executor("gpu", "http://127.0.0.1:9")], graph=SLEEP_GRAPH,
                 schema=SLEEP_SCHEMA, points=3)  # fmt: skip
    start = _last_seq(funded)
    task = task_submit(
        user=funded,
        action="slow",
        callback_url="http://127.0.0.1:9/hook",
        callback_events=["task.queued"],
    )
    recorded = _after(funded, start)
    assert [(t, p.get("status")) for _, t, p in recorded] == [
        ("wallet.points", "frozen"),
        ("task.status", "queued"),
    ]
    assert (
        WebhookDelivery.objects.filter(
            task_public_id=task.public_id, event_type="task.queued"
        ).count()
        == 1
    )


@pytest.mark.usefixtures("queued_submits")
def test_a_refused_freeze_writes_nothing(owner, published):
    make_ability("slow", [make_executor("gpu", "http://127.0.0.1:9")], graph=SLEEP_GRAPH,
                 schema=SLEEP_SCHEMA, points=50)  # fmt: skip
    start = _last_seq(owner) or 0
    with pytest.raises(AppError) as refused:
        task_submit(user=owner, action="slow")
    assert refused.value.status == 402
    assert Task.objects.count() == 0 and Hold.objects.count() == 0
    assert _after(owner, start) == []
    assert not [e for e in published if e["type"] == "task.status"]
    account = Account.objects.filter(user=owner).first()
    assert account is None or (account.balance, account.frozen) == (0, 0)
