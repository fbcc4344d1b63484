"""``events_batched``: the events a write raises are recorded together at the end of its block,
each user's in order on consecutive seqs, and published with those seqs after commit."""

from __future__ import annotations

import pytest
from django.db import transaction

from podi.realtime.events import emit, events_batched
from podi.realtime.models import Event

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_batch_records_each_users_events_in_order_at_its_end(owner, teammate, published):
    before = Event.objects.count()
    with transaction.atomic(), events_batched():
        first = emit(user_id=owner.pk, type="test.batch", payload={"n": 1}, task_id="tsk_a")
        other = emit(user_id=teammate.pk, type="test.batch", payload={"n": 2})
        second = emit(user_id=owner.pk, type="test.batch", payload={"n": 3})
        with events_batched():  # a nested block joins the outer one
            third = emit(user_id=owner.pk, type="test.batch", payload={"n": 4})
        assert first["seq"] is None  # recorded when the block ends
        assert Event.objects.count() == before
    mine = list(Event.objects.filter(user_id=owner.pk, type="test.batch").order_by("seq"))
    assert [row.payload["n"] for row in mine] == [1, 3, 4]
    assert [row.seq for row in mine] == [mine[0].seq, mine[0].seq + 1, mine[0].seq + 2]
    assert [first["seq"], second["seq"], third["seq"]] == [row.seq for row in mine]
    assert mine[0].task_public_id == "tsk_a"
    theirs = Event.objects.get(user_id=teammate.pk, type="test.batch")
    assert other["seq"] == theirs.seq
    # Published after commit, in the order raised, each with its recorded seq.
    sent = [e for e in published if e["type"] == "test.batch"]
    assert [e["payload"]["n"] for e in sent] == [1, 2, 3, 4]
    assert [e["seq"] for e in sent] == [first["seq"], theirs.seq, second["seq"], third["seq"]]


def test_a_batch_left_by_an_exception_records_and_publishes_nothing(owner, published):
    before = Event.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic(), events_batched():
        emit(user_id=owner.pk, type="test.batch", payload={"n": 1})
        raise RuntimeError("the write failed")
    assert Event.objects.count() == before
    assert not [e for e in published if e["type"] == "test.batch"]
    # The next event outside any batch is recorded at once, as always.
    with transaction.atomic():
        event = emit(user_id=owner.pk, type="test.batch", payload={"n": 2})
        assert event["seq"] is not None


def test_a_nested_block_left_by_an_exception_drops_only_its_own_events(owner, published):
    with transaction.atomic(), events_batched():
        kept = emit(user_id=owner.pk, type="test.batch", payload={"n": 1})
        with pytest.raises(RuntimeError), transaction.atomic(), events_batched():
            emit(user_id=owner.pk, type="test.batch", payload={"n": 2})
            raise RuntimeError("the savepoint rolls back")
        also = emit(user_id=owner.pk, type="test.batch", payload={"n": 3})
    rows = list(Event.objects.filter(user_id=owner.pk, type="test.batch").order_by("seq"))
    assert [row.payload["n"] for row in rows] == [1, 3]
    assert [kept["seq"], also["seq"]] == [row.seq for row in rows]
    assert [e["payload"]["n"] for e in published if e["type"] == "test.batch"] == [1, 3]
