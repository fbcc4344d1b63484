"""``emit_in_statement``: an event recorded inside the caller's own statement (PostgreSQL).

The caller's statement bumps the user's seq cursor (made on the user's first event) and inserts
the event; after it runs, ``emitted`` publishes the event after commit. Inside
``events_batched``, without a recorder, or on SQLite the caller is told to ``emit`` instead.
"""

from __future__ import annotations

import pytest
from django.db import DataError, connection, transaction

from podi.realtime.events import (
    emit,
    emit_in_statement,
    emit_several_in_statement,
    events_batched,
    set_recorder,
)
from podi.realtime.models import Event, EventCursor
from podi.realtime.services import (
    event_record,
    event_record_in_statement,
    events_record,
    events_record_in_statement,
)

POSTGRESQL = connection.vendor == "postgresql"


def _statement_event():
    return emit_in_statement(
        type="test.counted",
        source="src",
        user_sql="src.user_id",
        task_sql="src.task",
        payload_sql="jsonb_build_object('n', src.n)",
    )


def _run(recorded, user_id: int, n: int, task: str = "") -> int | None:
    sql = (
        "WITH src AS (SELECT %s::bigint AS user_id, %s::int AS n, %s::text AS task), "
        f"{recorded.ctes} SELECT {recorded.seq_sql}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [user_id, n, task, *recorded.params])
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_the_statement_records_the_event_and_the_cursor(owner, published):
    recorded = _statement_event()
    if not POSTGRESQL:
        assert recorded is None  # SQLite: the caller emits as usual
        return
    assert not EventCursor.objects.filter(user=owner).exists()
    seq = _run(recorded, owner.pk, 7, "tsk_x")
    event = recorded.emitted(user_id=owner.pk, payload={"n": 7}, seq=seq, task_id="tsk_x")
    assert seq == 1 and EventCursor.objects.get(user=owner).last_seq == 1
    row = Event.objects.get(public_id=event["id"])
    assert (row.user_id, row.seq, row.type, row.task_public_id, row.payload) == (
        owner.pk,
        1,
        "test.counted",
        "tsk_x",
        {"n": 7},
    )
    assert published[-1] == event and event["timestamp"].endswith("Z")
    # The next event of the user, by emit or by a statement, takes the next seq.
    with transaction.atomic():
        emitted = emit(user_id=owner.pk, type="test.counted", payload={"n": 8})
    again = _statement_event()
    assert emitted["seq"] == 2 and _run(again, owner.pk, 9) == 3


@pytest.mark.django_db
def test_a_statement_inside_a_batch_or_without_a_recorder_is_not_offered(owner):
    with transaction.atomic(), events_batched():
        assert _statement_event() is None
    try:
        set_recorder(None)
        assert _statement_event() is None
    finally:
        set_recorder(
            event_record,
            several=events_record,
            in_statement=event_record_in_statement,
            several_in_statement=events_record_in_statement,
        )
    assert (_statement_event() is not None) == POSTGRESQL


@pytest.mark.django_db
def test_a_failed_statement_records_nothing(owner, published, django_capture_on_commit_callbacks):
    if not POSTGRESQL:
        assert _statement_event() is None
        return
    recorded = _statement_event()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(DataError):
        with transaction.atomic():
            # The caller's statement fails after the event CTEs: nothing of it stays.
            with connection.cursor() as cursor:
                cursor.execute(
                    "WITH src AS (SELECT %s::bigint AS user_id, 1 AS n, '' AS task), "
                    f"{recorded.ctes} SELECT {recorded.seq_sql}, 1 / 0",
                    [owner.pk, *recorded.params],
                )
    assert not Event.objects.filter(public_id=recorded.id).exists()
    assert published == []


@pytest.mark.django_db(transaction=True)
def test_several_events_take_consecutive_seqs_in_order(owner, published):
    def several():
        return emit_several_in_statement(
            events=[
                ("test.first", "jsonb_build_object('n', src.n)", []),
                ("test.second", "%s::jsonb", ['{"given": true}']),
            ],
            source="src",
            user_sql="src.user_id",
            task_sql="src.task",
        )

    with transaction.atomic(), events_batched():
        assert several() is None  # a batch records its events together at its end
    recorded = several()
    if not POSTGRESQL:
        assert recorded is None
        return
    emit(user_id=owner.pk, type="test.before", payload={})
    sql = (
        "WITH src AS (SELECT %s::bigint AS user_id, %s::int AS n, %s::text AS task), "
        f"{recorded.ctes} SELECT {recorded.last_seq_sql}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [owner.pk, 5, "tsk_s", *recorded.params])
        last = cursor.fetchone()[0]
    events = recorded.emitted(
        last, user_id=owner.pk, task_id="tsk_s", payloads=[{"n": 5}, {"given": True}]
    )
    assert [e["seq"] for e in events] == [2, 3] and last == 3
    assert published[-2:] == events
    rows = Event.objects.filter(task_public_id="tsk_s").order_by("seq")
    assert [(r.seq, r.type, r.payload) for r in rows] == [
        (2, "test.first", {"n": 5}),
        (3, "test.second", {"given": True}),
    ]
