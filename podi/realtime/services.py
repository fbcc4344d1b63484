"""Writes of live events: record an event with the user's next ``seq``; operator-made events.

Webhook deliveries are in ``podi.realtime.webhooks``.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction

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
        delivery = webhook_delivery_create(
            webhook=webhook, user_id=user_id, task_id=event.get("taskId")
        )
        webhook_send_on_commit(delivery_id=delivery.pk)
    row = EventRow.objects.create(
        public_id=event["id"],
        user_id=user_id,
        seq=_next_seq(user_id),
        task_public_id=event.get("taskId") or "",
        type=event["type"],
        payload=event["payload"],
    )
    return {**event, "seq": row.seq, "timestamp": row.as_message()["timestamp"]}


def _next_seq(user_id: int) -> int:
    """Bump the user's cursor in one statement; its row lock orders seqs by commit."""
    table = connection.ops.quote_name(EventCursor._meta.db_table)
    # The table name comes from the model, never from input.
    sql = f"UPDATE {table} SET last_seq = last_seq + 1 WHERE user_id = %s RETURNING last_seq"  # noqa: S608
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(sql, [user_id])
            row = cursor.fetchone()
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
