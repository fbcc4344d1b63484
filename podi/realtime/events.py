"""The public face of live events: what other apps import from ``podi.realtime``.

* ``emit(user_id=…, type=…, payload=…, task_id=…, webhook=…)`` is how every service raises an
  event. Inside the caller's transaction the *recorder* (``services.event_record``, wired by
  ``RealtimeConfig.ready``) persists it with the user's next ``seq`` and, when a ``Webhook`` is
  given, records its delivery (outbox); after commit the event goes to every *sink* (the
  WebSocket fan-out). With no recorder the event is published unpersisted.
* Apps above this one lend it what it must not import, from their ``AppConfig.ready()``:
  ``register_followable(kind, resolver)`` answers "which of these objects may this principal
  follow?" (``tasks`` registers ``"task"``, its access rule); ``register_webhook_body_hook(hook)``
  finishes a webhook body at send time and ``register_stream_payload_hook(hook)`` an event's
  payload when the stream sends it (``tasks`` signs output URLs, which expire, for both).

This module imports nothing of the app, so every other module of it may import this one.
See docs/adr/0006-live-events.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction

# Re-exported: the followable hooks take one (the principal is podi core's, docs/architecture.md §5).
from podi.access import Principal as Principal
from podi.ids import new_id

logger = logging.getLogger("podi.realtime")

Event = dict[str, Any]
EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class Webhook:
    """A callback to record with an event: POSTed after commit, signed, retried.

    ``body`` is sent as is, after the registered body hooks (signing output URLs); the secret is
    the service key's (``service_key_id``) or the platform's.
    """

    url: str
    event_type: str
    body: dict[str, Any]
    service_key_id: int | None = None


EventRecorder = Callable[[Event, "Webhook | None"], Event]
# Several events of one user at once, in order: [(event, webhook)] → events with their seqs.
SeveralRecorder = Callable[[list[tuple[Event, "Webhook | None"]]], list[Event]]
# (principal, ids) → (ids of the principal's own objects, ids of others' it may follow)
Followable = Callable[[Principal, list[str]], tuple[set[str], set[str]]]
WebhookBodyHook = Callable[[dict[str, Any]], dict[str, Any]]
# (event id, type, time, FROM list, SQL for the user id, task id and payload) → CTEs recording
# that event inside the caller's own statement, and their parameters (``emit_in_statement``).
StatementRecorder = Callable[..., tuple[str, list]]
# (event type, payload) → the payload as the stream sends it (never the persisted one)
StreamPayloadHook = Callable[[str, dict[str, Any]], dict[str, Any]]

_sinks: list[EventSink] = []
_recorder: list[EventRecorder] = []
_several: list[SeveralRecorder] = []
_in_statement: list[StatementRecorder] = []
_several_in_statement: list[StatementRecorder] = []
_followable: dict[str, Followable] = {}
_webhook_body_hooks: list[WebhookBodyHook] = []
_stream_payload_hooks: list[StreamPayloadHook] = []
# The events raised inside ``events_batched`` in this thread, waiting to be recorded.
_batch = threading.local()


# --- Registration (AppConfig.ready) ------------------------------------------------------------


def register_sink(sink: EventSink) -> None:
    if sink not in _sinks:
        _sinks.append(sink)


def unregister_sink(sink: EventSink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def set_recorder(
    recorder: EventRecorder | None,
    several: SeveralRecorder | None = None,
    in_statement: StatementRecorder | None = None,
    several_in_statement: StatementRecorder | None = None,
) -> None:
    """Wired once by ``RealtimeConfig.ready``; ``None`` publishes unpersisted (benchmarks).
    ``several`` records a user's events at once (``events_batched``); without it they are
    recorded one by one. ``in_statement`` lends ``emit_in_statement`` the SQL that records an
    event inside a caller's own statement (PostgreSQL), ``several_in_statement`` the same for
    ``emit_several_in_statement``; without them callers emit as usual."""
    _recorder[:] = [recorder] if recorder else []
    _several[:] = [several] if recorder and several else []
    _in_statement[:] = [in_statement] if recorder and in_statement else []
    _several_in_statement[:] = [several_in_statement] if recorder and several_in_statement else []


def register_followable(kind: str, resolver: Followable) -> None:
    """Let ``kind`` objects be followed on the stream; ``resolver`` is the kind's access check."""
    _followable[kind] = resolver


def register_webhook_body_hook(hook: WebhookBodyHook) -> None:
    if hook not in _webhook_body_hooks:
        _webhook_body_hooks.append(hook)


def register_stream_payload_hook(hook: StreamPayloadHook) -> None:
    """Let ``hook`` finish an event's payload each time the stream encodes it (live or replayed):
    what expires, such as a signed URL, is made then, never persisted."""
    if hook not in _stream_payload_hooks:
        _stream_payload_hooks.append(hook)


# --- Use --------------------------------------------------------------------------------------


def followable(kind: str, principal: Principal, ids: list[str]) -> tuple[set[str], set[str]]:
    """(own ids, others' ids the principal may follow) among ``ids``; nothing for unknown kinds."""
    resolver = _followable.get(kind)
    if resolver is None or not ids:
        return set(), set()
    return resolver(principal, ids)


def webhook_body_for_sending(body: dict[str, Any]) -> dict[str, Any]:
    for hook in _webhook_body_hooks:
        body = hook(body)
    return body


def stream_payload_for_sending(event_type: str, payload: Any) -> Any:
    if not isinstance(payload, dict):
        return payload
    for hook in _stream_payload_hooks:
        try:
            payload = hook(event_type, payload)
        except Exception:  # the event still goes out; its URLs come from the REST API then
            logger.exception("a stream payload hook failed for a %s event", event_type)
    return payload


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
    webhook: Webhook | None = None,
    using: str = "default",
) -> Event:
    """Record an event (and its webhook) in the current transaction; publish it after commit.

    Inside ``events_batched`` it is recorded when the block ends (its ``seq`` is filled in then)."""
    event = _new_event(user_id, type, payload, task_id)
    pending = getattr(_batch, "pending", None)
    if pending is not None:
        pending.append((event, webhook))
    elif _recorder:
        event = _recorder[0](event, webhook)
    publish_on_commit(event, using=using)
    return event


@dataclass
class StatementEvent:
    """An event recorded by the caller's own SQL statement (``emit_in_statement``).

    Put ``ctes`` (with ``params``, in that place) into the statement's ``WITH`` list after the
    CTEs its FROM list names, select ``seq_sql``, and once the statement has run call
    ``emitted`` with what it wrote: the event is then published after commit, as ``emit`` does.
    """

    id: str
    type: str
    at: datetime
    ctes: str
    params: list
    seq_sql: str = "(SELECT seq FROM podi_event_row)"

    def emitted(
        self, *, user_id: int, payload: dict[str, Any], seq: int | None, task_id: str | None = None,
        using: str = "default",
    ) -> Event:  # fmt: skip
        event = {
            "id": self.id,
            "seq": seq,
            "type": self.type,
            "userId": user_id,
            "taskId": task_id,
            "payload": payload,
            "timestamp": self.at.isoformat().replace("+00:00", "Z"),
        }
        publish_on_commit(event, using=using)
        return event


def emit_in_statement(
    *, type: str, source: str, user_sql: str, task_sql: str, payload_sql: str
) -> StatementEvent | None:
    """Record an event of ``type`` inside the caller's own data-modifying statement, so a write
    and its event take one round trip (and, in autocommit, one transaction with no BEGIN and
    COMMIT of its own): the user's seq cursor is bumped and the event row inserted by two
    CTEs reading ``source`` (the caller's FROM list, one row), where ``user_sql``, ``task_sql``
    (text, '' for none) and ``payload_sql`` (jsonb) are SQL expressions over it.

    None when the event must go through ``emit`` instead: no statement recorder (not
    PostgreSQL, or events unpersisted), or inside ``events_batched``, whose events are
    recorded together at its end. Only our own SQL is interpolated; values are parameters.
    """
    if not _in_statement or getattr(_batch, "pending", None) is not None:
        return None
    event_id, at = new_id("evt"), datetime.now(UTC)
    ctes, params = _in_statement[0](
        event_id,
        type,
        at,
        source=source,
        user_sql=user_sql,
        task_sql=task_sql,
        payload_sql=payload_sql,
    )
    if not ctes:
        return None
    return StatementEvent(id=event_id, type=type, at=at, ctes=ctes, params=params)


@dataclass
class StatementEvents:
    """Several events of one user recorded by the caller's own statement, in order
    (``emit_several_in_statement``). Put ``ctes`` with ``params`` into the statement as for one
    event, select ``last_seq_sql``, and once it ran call ``emitted``."""

    ctes: str
    params: list
    events: list[StatementEvent]
    last_seq_sql: str = "(SELECT last_seq FROM podi_event_seq)"

    def emitted(
        self, last_seq: int | None, *, user_id: int, task_id: str | None, payloads: list[dict]
    ) -> list[Event]:
        """Publish the events after commit; they took the seqs up to ``last_seq``."""
        first = None if last_seq is None else last_seq - len(self.events) + 1
        return [
            event.emitted(
                user_id=user_id,
                payload=payload,
                seq=None if first is None else first + index,
                task_id=task_id,
            )
            for index, (event, payload) in enumerate(zip(self.events, payloads, strict=True))
        ]


def emit_several_in_statement(
    *, events: list[tuple[str, str, list]], source: str, user_sql: str, task_sql: str
) -> StatementEvents | None:
    """``emit_in_statement`` for several events of one user at once, in order: ``events`` are
    (type, payload SQL, the payload SQL's parameters). None where ``emit_in_statement`` gives
    None."""
    if not _several_in_statement or getattr(_batch, "pending", None) is not None:
        return None
    at = datetime.now(UTC)
    made = [
        StatementEvent(id=new_id("evt"), type=type, at=at, ctes="", params=[])
        for type, _, _ in events
    ]
    ctes, params = _several_in_statement[0](
        [
            (event.id, event.type, sql, extra)
            for event, (_, sql, extra) in zip(made, events, strict=True)
        ],
        at,
        source=source,
        user_sql=user_sql,
        task_sql=task_sql,
    )
    if not ctes:
        return None
    return StatementEvents(ctes=ctes, params=params, events=made)


@contextlib.contextmanager
def events_batched() -> Iterator[None]:
    """Record the events raised in the block at its end, still in the caller's transaction: each
    user's in order on consecutive seqs, in one statement per user where the database allows
    (``several`` of ``set_recorder``), instead of one (or two) per event. Use it inside ``transaction.atomic``
    around a write that raises several events; a block left by an exception records nothing
    (its transaction rolls back). Nested blocks join the outermost one; one left by an exception
    (a savepoint rolled back, say) drops the events raised inside it."""
    outer = getattr(_batch, "pending", None)
    if outer is not None:
        mark = len(outer)
        try:
            yield
        except BaseException:
            del outer[mark:]
            raise
        return
    _batch.pending = []
    try:
        yield
        pending = _batch.pending
    finally:
        _batch.pending = None
    _record_batch(pending)


def _record_batch(pending: list[tuple[Event, Webhook | None]]) -> None:
    """Record ``pending`` per user, in order; the events' dicts (already handed to the publisher)
    get their ``seq`` and ``timestamp`` in place."""
    if not pending or not _recorder:
        return
    by_user: dict[int | None, list[tuple[Event, Webhook | None]]] = {}
    for event, webhook in pending:
        by_user.setdefault(event.get("userId"), []).append((event, webhook))
    # Cursor rows are locked in one order (by user id) in every batch, so two writes that each
    # raise events for the same two users never wait on each other in a circle.
    for _, made in sorted(by_user.items(), key=lambda item: (item[0] is None, item[0] or 0)):
        if _several:
            recorded = _several[0](made)
        else:
            recorded = [_recorder[0](event, webhook) for event, webhook in made]
        for (event, _), done in zip(made, recorded, strict=True):
            event.update(done)


def _new_event(user_id: int | None, type: str, payload: dict[str, Any], task_id) -> Event:
    return {
        "id": new_id("evt"),
        "seq": None,
        "type": type,
        "userId": user_id,
        "taskId": task_id,
        "payload": payload,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
