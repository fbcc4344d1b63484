"""Side effects after commit: ``enqueue_on_commit`` for actors, ``emit`` for events.

``emit(user_id=…, type=…, payload=…)`` is how every service raises an event. Inside the caller's
transaction the registered *recorder* (the realtime layer's; it persists the event and gives it
its ``id`` and per-user ``seq``) runs; after commit the event goes to every registered *sink*
(WebSocket fan-out, webhooks). With no recorder the event is published unpersisted; with no sink
publishing is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import transaction

from podi.ids import new_id

logger = logging.getLogger("podi.events")

Event = dict[str, Any]
EventSink = Callable[[Event], None]
EventRecorder = Callable[[Event], Event]
_sinks: list[EventSink] = []
_recorder: list[EventRecorder] = []


def register_sink(sink: EventSink) -> None:
    if sink not in _sinks:
        _sinks.append(sink)


def unregister_sink(sink: EventSink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def set_recorder(recorder: EventRecorder | None) -> None:
    _recorder[:] = [recorder] if recorder else []


def publish_now(event: Event) -> None:
    """Deliver to every sink immediately (does not wait for a commit)."""
    for sink in list(_sinks):
        try:
            sink(event)
        except Exception:  # a broken subscriber must never break the write that published
            logger.exception("event sink %r failed", sink)


def publish_on_commit(event: Event, *, using: str = "default") -> None:
    transaction.on_commit(lambda: publish_now(event), using=using)


def emit(
    *,
    user_id: int | None,
    type: str,
    payload: dict[str, Any],
    task_id: str | None = None,
    using: str = "default",
) -> Event:
    """Record an event in the current transaction and publish it after commit."""
    event: Event = {
        "id": new_id("evt"),
        "seq": None,
        "type": type,
        "userId": user_id,
        "taskId": task_id,
        "payload": payload,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if _recorder:
        event = _recorder[0](event)
    publish_on_commit(event, using=using)
    return event


def enqueue_on_commit(actor, *args: Any, using: str = "default", **options: Any) -> None:
    """Send ``actor`` after the current transaction commits (immediately outside one).

    The message is only a doorbell: when the broker is unreachable (Redis restarting) the send is
    logged and dropped, never turned into an error of the request that already committed; the
    reconciler finds the work from the database rows (docs/adr/0009-fleet.md).
    """
    transaction.on_commit(lambda: _send_quietly(actor, args, options), using=using)


def _send_quietly(actor, args: tuple, options: dict) -> None:
    import dramatiq.errors
    import redis.exceptions

    try:
        if options:
            actor.send_with_options(args=args, **options)
        else:
            actor.send(*args)
    except (
        dramatiq.errors.BrokerConnectionError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    ) as exc:
        logger.warning(
            "broker unreachable, %s not sent (the reconciler catches up): %s", actor, exc
        )
