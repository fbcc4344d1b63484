"""Where events go after commit: the fan-out to WebSocket subscribers.

``podi.realtime.events.publish_now`` calls :func:`channel_layer_sink` (a sink registered by
``RealtimeConfig.ready``) in whatever thread committed the transaction (a web request thread, a
worker thread, the reconciler). The sink never waits on the network there: it hands the event to
an event loop and returns.

* Production (a channel layer other than the in-memory one, i.e. Redis): a daemon thread of this
  process runs a loop that ``group_send``s the event to ``user.<userId>``, ``task.<taskId>`` and
  ``staff``. Every web process's hub (``podi.realtime.consumers.Hub``) belongs to the groups its
  sockets need, so an event raised in a worker reaches sockets held by any web process.
* Embedded (the in-memory layer, which only ever reaches its own process): the event goes
  straight to this process's hub on the loop that serves the sockets. A process without sockets
  (``manage.py shell``, a separate worker) has nobody to tell and publishes nothing; its events
  still reach sockets through the database, at the hub's next check.

A subscriber that misses a message (channel full, Redis down, a process died between commit and
publish) is not left behind: every event is persisted with a per-user ``seq`` and the consumer
fills gaps from the database.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer

from podi.realtime.events import Event

logger = logging.getLogger("podi.realtime")

STAFF_GROUP = "staff"
# Channel-layer message types mirror event types; other types travel as "notify.event".
KNOWN_TYPES = frozenset({"task.status", "task.progress", "wallet.points"})
GENERIC_TYPE = "notify.event"
# Several events published together travel as one message per group (ADR 0032).
BATCH_TYPE = "notify.batch"
# Events waiting for the publisher loop; past this the sink drops (subscribers recover by seq).
MAX_PENDING = 10_000


def user_group(user_id: int) -> str:
    return f"user.{int(user_id)}"


def task_group(task_id: str) -> str:
    return f"task.{task_id}"


def groups_for(event: Event) -> list[str]:
    groups = []
    if event.get("userId") is not None:
        groups.append(user_group(event["userId"]))
    if event.get("taskId"):
        groups.append(task_group(event["taskId"]))
    groups.append(STAFF_GROUP)
    return groups


def channel_message(event: Event) -> dict[str, Any]:
    kind = event["type"] if event["type"] in KNOWN_TYPES else GENERIC_TYPE
    return {"type": kind, "event": event}


def channel_batch(events: list[Event]) -> dict[str, Any]:
    """The channel-layer message for ``events`` (one alone travels as ``channel_message``)."""
    if len(events) == 1:
        return channel_message(events[0])
    return {"type": BATCH_TYPE, "events": events}


def uses_channel_layer() -> bool:
    """False when events stay in this process (no layer, or the in-memory one)."""
    layer = get_channel_layer()
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


class _Publisher:
    """Hands events to the right event loop without blocking the caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local: tuple[asyncio.AbstractEventLoop, Callable[[Event], None]] | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._batch: list[Event] = []  # published, not yet taken by the loop
        self.dropped = 0

    def attach_local(self, loop: asyncio.AbstractEventLoop, route: Callable[[Event], None]):
        """Called by the hub of the loop that serves this process's sockets."""
        with self._lock:
            self._local = (loop, route)

    def _publisher_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._own_loop is None or self._own_loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="podi-event-publisher", daemon=True
                )
                thread.start()
                self._own_loop = loop
            return self._own_loop

    def publish(self, event: Event) -> bool:
        """Schedule the fan-out of ``event``; False when it was not scheduled."""
        if not uses_channel_layer():
            local = self._local
            if local is None or local[0].is_closed():
                return False
            local[0].call_soon_threadsafe(local[1], dict(event))
            return True
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                logger.warning("event publisher backlog full; dropped %s", event.get("id"))
                return False
            self._pending += 1
            self._batch.append(event)
            first = len(self._batch) == 1
        if first:  # the events published before the loop takes this batch go with it
            self._publisher_loop().call_soon_threadsafe(self._take_batch)
        return True

    def _take_batch(self) -> None:
        with self._lock:
            events, self._batch = self._batch, []
        if events:
            task = asyncio.ensure_future(self._fan_out(get_channel_layer(), events))
            task.add_done_callback(functools.partial(self._done, len(events)))

    async def _fan_out(self, layer, events: list[Event]) -> None:
        """One channel-layer message per group for the events published together (a commit's
        events, a burst's): each group gets them in order (ADR 0032)."""
        by_group: dict[str, list[Event]] = {}
        for event in events:
            for group in groups_for(event):
                by_group.setdefault(group, []).append(event)
        for group, batch in by_group.items():
            try:
                await layer.group_send(group, channel_batch(batch))
            except Exception:  # the next groups still get theirs; subscribers recover by seq
                logger.exception("publishing %s event(s) to %s failed", len(batch), group)

    def _done(self, count: int, future) -> None:
        with self._lock:
            self._pending -= count
        if not future.cancelled() and future.exception() is not None:
            logger.error("publishing events failed", exc_info=future.exception())

    @property
    def pending(self) -> int:
        return self._pending


publisher = _Publisher()


def channel_layer_sink(event: Event) -> None:
    """The event sink: fan the event out to WebSocket subscribers (never blocks)."""
    publisher.publish(event)
