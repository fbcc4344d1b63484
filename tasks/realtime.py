"""Where events go after commit: the channel-layer fan-out to WebSocket subscribers.

``podi.events.publish_now`` calls :func:`channel_layer_sink` in whatever thread committed the
transaction (a web request thread, a worker thread, the reconciler). The sink never waits on the
network there: it hands the event to a *publisher loop* and returns. The publisher loop
``group_send``s it to

* ``user.<userId>``: every socket of the event's user,
* ``task.<taskId>``: sockets that subscribed to that task (staff, the service key that
  submitted it),
* ``staff``: staff sockets that subscribed to everything.

Which loop: with Redis (production) a daemon thread of its own, so a web or worker process reaches
sockets held by any web process; with the in-memory layer (embedded) the loop that serves the
sockets, which every consumer registers when it connects (an in-memory layer only reaches sockets
of its own process and its queues belong to that loop). A process without sockets and without
Redis has nobody to tell and publishes nothing.

A subscriber that misses a message (channel full, a process died between commit and publish) is
not left behind: every event is persisted with a per-user ``seq`` and the consumer fills gaps
from the database (see ``tasks.consumers``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer

from podi.events import Event, register_sink

logger = logging.getLogger("podi.realtime")

STAFF_GROUP = "staff"
# Channel message types the consumer has handlers for (handler name = type with "." → "_");
# any other event type travels as "notify.event".
KNOWN_TYPES = frozenset({"task.status", "task.progress", "wallet.points"})
GENERIC_TYPE = "notify.event"
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


class _Publisher:
    """Runs ``group_send`` on the right event loop without blocking the caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving_loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self.dropped = 0

    def attach_serving_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called by consumers: the loop that holds this process's sockets."""
        if self._serving_loop is not loop:
            with self._lock:
                self._serving_loop = loop

    def _loop_for(self, layer) -> asyncio.AbstractEventLoop | None:
        if isinstance(layer, InMemoryChannelLayer):
            loop = self._serving_loop
            return loop if loop is not None and not loop.is_closed() else None
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
        layer = get_channel_layer()
        if layer is None:
            return False
        loop = self._loop_for(layer)
        if loop is None:
            return False
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                logger.warning("event publisher backlog full; dropped %s", event.get("id"))
                return False
            self._pending += 1
        future = asyncio.run_coroutine_threadsafe(self._fan_out(layer, event), loop)
        future.add_done_callback(self._done)
        return True

    async def _fan_out(self, layer, event: Event) -> None:
        message = channel_message(event)
        for group in groups_for(event):
            await layer.group_send(group, message)

    def _done(self, future) -> None:
        with self._lock:
            self._pending -= 1
        if not future.cancelled() and future.exception() is not None:
            logger.error(
                "publishing an event failed", exc_info=future.exception(), extra={"sink": "ws"}
            )

    @property
    def pending(self) -> int:
        return self._pending


publisher = _Publisher()


def attach_serving_loop(loop: asyncio.AbstractEventLoop | None = None) -> None:
    publisher.attach_serving_loop(loop or asyncio.get_running_loop())


def channel_layer_sink(event: Event) -> None:
    """The ``podi.events`` sink: fan the event out to WebSocket subscribers (never blocks)."""
    publisher.publish(event)


def register_sinks() -> None:
    """Register the post-commit event sinks with ``podi.events`` (called by TasksConfig.ready).

    Webhooks are not a sink: a task's callbacks are recorded as ``WebhookDelivery`` rows in the
    task's own transaction (``tasks.webhooks``), so none is lost with a process.
    """
    from django.conf import settings

    from tasks import webhooks  # registers the webhook reconciler step

    if settings.WEBHOOK_SECRET:
        webhooks.check_signing_secret(settings.WEBHOOK_SECRET)  # fail at start, not at send
    register_sink(channel_layer_sink)


def notify_event_push(*, user, type: str, payload: dict[str, Any]) -> Event:
    """Record and publish an operator-made event for ``user`` (``POST /api/notify/v1/event``).

    ``payload.taskId`` links the event to that task only when the task is ``user``'s own.
    """
    from django.db import transaction

    from podi.events import emit
    from tasks.models import Task

    task_id = payload.get("taskId")
    if not (
        isinstance(task_id, str)
        and Task.objects.filter(public_id=task_id, user_id=user.pk).exists()
    ):
        task_id = None
    with transaction.atomic():
        return emit(user_id=user.pk, type=type, payload=payload, task_id=task_id)
