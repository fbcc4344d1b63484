"""Writes of live events: record an event with the user's next ``seq``; operator-made events.

Webhook deliveries are in ``podi.realtime.webhooks``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from podi.access import owners_of
from podi.realtime.events import Event, Webhook, emit
from podi.realtime.models import Event as EventRow
from podi.realtime.models import EventCursor
from podi.realtime.webhooks import webhook_delivery_create, webhook_send_on_commit


def event_record(event: Event, webhook: Webhook | None = None) -> Event:
    """The recorder ``emit`` calls in the caller's transaction: persist the event with the
    user's next ``seq``, and record ``webhook``'s delivery (sent after commit).

    The user's cursor row is locked, so seqs are handed out in commit order per user and a
    subscriber that resumes after ``seq`` N misses nothing.
    """
    user_id = event.get("userId")
    if user_id is None:
        return event
    if webhook is not None:
        _record_webhook(webhook, user_id=user_id, event=event)
    now = timezone.now()
    seq = _insert(event, user_id=user_id, now=now)
    return {**event, "seq": seq, "timestamp": now.isoformat().replace("+00:00", "Z")}


def _record_webhook(webhook: Webhook, *, user_id: int, event: Event) -> None:
    """Record the delivery of ``webhook`` (outbox) and send it after commit."""
    delivery = webhook_delivery_create(
        webhook=webhook, user_id=user_id, task_id=event.get("taskId")
    )
    webhook_send_on_commit(delivery_id=delivery.pk)


def events_record(made: list[tuple[Event, Webhook | None]]) -> list[Event]:
    """``event_record`` for several events of one user at once (``events_batched``): consecutive
    seqs, one statement on PostgreSQL for all of them."""
    user_id = made[0][0].get("userId")
    if user_id is None or len(made) == 1:
        return [event_record(event, webhook) for event, webhook in made]
    for event, webhook in made:
        if webhook is not None:
            _record_webhook(webhook, user_id=user_id, event=event)
    now = timezone.now()
    events = [event for event, _ in made]
    last = _insert_several(events, user_id=user_id, now=now)
    first = last - len(events) + 1
    stamp = now.isoformat().replace("+00:00", "Z")
    return [{**event, "seq": first + i, "timestamp": stamp} for i, event in enumerate(events)]


def _insert_several(events: list[Event], *, user_id: int, now) -> int:
    """Insert ``events`` with the user's next seqs in order; returns the last seq."""
    if connection.vendor != "postgresql":
        return _insert_several_apart(events, user_id=user_id, now=now)
    cursor_table, event_table, columns = _names()
    rows = ", ".join(["(%s::int, %s, %s, %s, %s::jsonb)"] * len(events))
    sql = (
        f"WITH bumped AS (UPDATE {cursor_table} SET last_seq = last_seq + %s "  # noqa: S608
        f"WHERE user_id = %s RETURNING last_seq) INSERT INTO {event_table} ({columns}) "
        f"SELECT v.public_id, %s, bumped.last_seq - %s + v.n, v.task, v.type, v.payload, %s "
        f"FROM bumped, (VALUES {rows}) AS v(n, public_id, task, type, payload) "
        "ORDER BY v.n RETURNING seq"
    )
    values: list = []
    for n, event in enumerate(events, start=1):
        values += [n, event["id"], event.get("taskId") or "", event["type"]]
        values.append(json.dumps(event["payload"]))
    count = len(events)
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(sql, [count, user_id, user_id, count, now, *values])
            seqs = [row[0] for row in cursor.fetchall()]
        if seqs:
            return max(seqs)
        EventCursor.objects.get_or_create(user_id=user_id)
    raise RuntimeError(f"no event cursor for user {user_id}")


def _insert_several_apart(events: list[Event], *, user_id: int, now) -> int:
    """``_insert_several`` elsewhere: bump the cursor by all of them, then insert them all."""
    bump, insert, _ = _sql()
    bump = bump.replace("last_seq + 1", "last_seq + %s")
    when = connection.ops.adapt_datetimefield_value(now)
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(bump, [len(events), user_id])
            row = cursor.fetchone()
            if row is not None:
                first = row[0] - len(events) + 1
                rows = [
                    [
                        event["id"],
                        user_id,
                        first + i,
                        event.get("taskId") or "",
                        event["type"],
                        json.dumps(event["payload"]),
                        when,
                    ]
                    for i, event in enumerate(events)
                ]
                cursor.executemany(insert, rows)
                return row[0]
        EventCursor.objects.get_or_create(user_id=user_id)
    raise RuntimeError(f"no event cursor for user {user_id}")


@functools.cache
def _names() -> tuple[str, str, str]:
    """(the cursor table, the event table, the event columns), quoted. Only these, our own
    names, are interpolated into the event statements; values are parameters."""
    quote = connection.ops.quote_name
    columns = ", ".join(
        quote(name)
        for name in (
            "public_id",
            "user_id",
            "seq",
            "task_public_id",
            "type",
            "payload",
            "created_at",
        )
    )
    return quote(EventCursor._meta.db_table), quote(EventRow._meta.db_table), columns


@functools.cache
def _sql() -> tuple[str, str, str]:
    """(bump the cursor, insert the event, both in one statement)."""
    cursor_table, event_table, columns = _names()
    bump = (
        f"UPDATE {cursor_table} SET last_seq = last_seq + 1 WHERE user_id = %s RETURNING last_seq"  # noqa: S608
    )
    insert = f"INSERT INTO {event_table} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s)"  # noqa: S608
    both = (
        f"WITH bumped AS ({bump}) INSERT INTO {event_table} ({columns}) "  # noqa: S608
        "SELECT %s, %s, bumped.last_seq, %s, %s, %s::jsonb, %s FROM bumped RETURNING seq"
    )
    return bump, insert, both


@functools.cache
def _in_statement_sql(source: str, user_sql: str, task_sql: str, payload_sql: str) -> str:
    cursor_table, event_table, columns = _names()
    # The cursor row is made on a user's first event (an upsert), so the caller's statement
    # never has to be repeated for it; it stays locked to the statement's commit, as in _insert.
    return (
        f"podi_event_seq AS (INSERT INTO {cursor_table} (user_id, last_seq) "  # noqa: S608
        f"SELECT {user_sql}, 1 FROM {source} ON CONFLICT (user_id) "
        f"DO UPDATE SET last_seq = {cursor_table}.last_seq + 1 RETURNING last_seq), "
        f"podi_event_row AS (INSERT INTO {event_table} ({columns}) "
        f"SELECT %s, {user_sql}, podi_event_seq.last_seq, {task_sql}, %s, {payload_sql}, %s "
        f"FROM podi_event_seq CROSS JOIN {source} RETURNING seq)"
    )


@functools.cache
def _several_in_statement_sql(
    source: str, user_sql: str, task_sql: str, payload_sqls: tuple[str, ...]
) -> str:
    cursor_table, event_table, columns = _names()
    n = len(payload_sqls)
    rows = ", ".join(f"({i}, %s::text, %s::text, {sql})" for i, sql in enumerate(payload_sqls, 1))
    # As _in_statement_sql, for n events of one user: the cursor moves by n, the events take the
    # n seqs up to it, in the order given.
    return (
        f"podi_event_seq AS (INSERT INTO {cursor_table} (user_id, last_seq) "  # noqa: S608
        f"SELECT {user_sql}, {n} FROM {source} ON CONFLICT (user_id) "
        f"DO UPDATE SET last_seq = {cursor_table}.last_seq + {n} RETURNING last_seq), "
        f"podi_event_row AS (INSERT INTO {event_table} ({columns}) "
        f"SELECT v.id, {user_sql}, podi_event_seq.last_seq - {n} + v.n, {task_sql}, v.type, "
        f"v.payload, %s FROM podi_event_seq CROSS JOIN {source} "
        f"CROSS JOIN LATERAL (VALUES {rows}) AS v(n, id, type, payload) RETURNING seq)"
    )


def events_record_in_statement(
    events: list[tuple[str, str, str, list]], at, *, source: str, user_sql: str, task_sql: str
) -> tuple[str, list]:
    """``event_record_in_statement`` for several events of one user, in order: ``events`` are
    (event id, type, payload SQL, the payload SQL's parameters). PostgreSQL only."""
    if connection.vendor != "postgresql":
        return "", []
    sql = _several_in_statement_sql(source, user_sql, task_sql, tuple(e[2] for e in events))
    params: list = [at]
    for event_id, type, _, payload_params in events:
        params += [event_id, type, *payload_params]
    return sql, params


def event_record_in_statement(
    event_id: str, type: str, at, *, source: str, user_sql: str, task_sql: str, payload_sql: str
) -> tuple[str, list]:
    """The statement recorder ``emit_in_statement`` calls: CTEs that bump the user's cursor and
    insert the event, inside the caller's statement. PostgreSQL only (``("", [])`` elsewhere)."""
    if connection.vendor != "postgresql":
        return "", []
    return _in_statement_sql(source, user_sql, task_sql, payload_sql), [event_id, type, at]


def _insert(event: Event, *, user_id: int, now) -> int:
    """Insert the event with the user's next seq. The cursor row's lock orders seqs by commit.

    PostgreSQL: one statement (the cursor bump feeds the insert). Elsewhere: the bump, then the
    insert, under the transaction's write lock. A user without a cursor row gets one first.
    """
    bump, insert, both = _sql()
    payload = json.dumps(event["payload"])
    task = event.get("taskId") or ""
    for _ in range(2):
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    both, [user_id, event["id"], user_id, task, event["type"], payload, now]
                )
                row = cursor.fetchone()
            else:
                cursor.execute(bump, [user_id])
                row = cursor.fetchone()
                if row is not None:
                    when = connection.ops.adapt_datetimefield_value(now)
                    cursor.execute(
                        insert, [event["id"], user_id, row[0], task, event["type"], payload, when]
                    )
        if row is not None:
            return row[0]
        EventCursor.objects.get_or_create(user_id=user_id)
    raise RuntimeError(f"no event cursor for user {user_id}")


def notify_event_push(*, user, type: str, payload: dict[str, Any]) -> Event:
    """Record and publish an operator-made event for ``user`` (``POST /api/notify/v1/event``).

    ``payload.taskId`` links the event to that task only when the task is ``user``'s own.
    """
    task_id = payload.get("taskId")
    if not (isinstance(task_id, str) and owners_of("task", [task_id]).get(task_id) == user.pk):
        task_id = None
    with transaction.atomic():
        return emit(user_id=user.pk, type=type, payload=payload, task_id=task_id)
