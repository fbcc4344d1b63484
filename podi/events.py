"""Side effects after commit: ``enqueue_on_commit`` for actors, ``publish_on_commit`` for events.

Publishing goes through sinks registered at start-up (the realtime layer registers the WebSocket
and webhook sinks); with no sink registered publishing is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

logger = logging.getLogger("podi.events")

EventSink = Callable[[dict[str, Any]], None]
_sinks: list[EventSink] = []


def register_sink(sink: EventSink) -> None:
    if sink not in _sinks:
        _sinks.append(sink)


def unregister_sink(sink: EventSink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def publish_now(event: dict[str, Any]) -> None:
    """Deliver to every sink immediately (does not wait for a commit)."""
    for sink in list(_sinks):
        try:
            sink(event)
        except Exception:  # a broken subscriber must never break the write that published
            logger.exception("event sink %r failed", sink)


def publish_on_commit(event: dict[str, Any], *, using: str = "default") -> None:
    transaction.on_commit(lambda: publish_now(event), using=using)


def enqueue_on_commit(actor, *args: Any, using: str = "default", **options: Any) -> None:
    """Send ``actor`` after the current transaction commits (immediately outside one)."""
    if options:
        transaction.on_commit(lambda: actor.send_with_options(args=args, **options), using=using)
    else:
        transaction.on_commit(lambda: actor.send(*args), using=using)
