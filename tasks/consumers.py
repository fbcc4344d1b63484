"""The live event stream: ``/api/notify/v1/stream`` (DESIGN §5 Notifications, invariant 5).

Protocol (JSON text frames):

* Connect with ``?token=<accessToken or psk_…>`` or the subprotocol ``bearer.<token>``. Without a
  valid token the socket is accepted and closed at once with code 4401 (a close code a browser
  can read; a refused handshake would only say "failed").
* The server sends ``{"type":"hello","userId","lastSeq","heartbeat"}``, then the caller's own
  events as they commit: ``{"id","seq","type","payload","timestamp"}``. ``lastSeq`` is the
  caller's newest event ``seq`` at connect: live events start after it.
* ``{"action":"resume","after":N}`` replays the caller's persisted events with ``seq > N`` and
  goes on live with no gap and no duplicate; ``{"type":"resumed","after","lastSeq","count"}``
  marks the end of the replay.
* ``{"action":"subscribe","taskIds":[…]}`` adds tasks of other users the caller may follow
  (staff: any; a service key: the tasks it submitted); the caller's own tasks are always
  included. Refused ids get one ``{"type":"error","code":"TASK_NOT_FOUND"}`` and nothing else.
  ``{"action":"subscribe","all":true}`` (staff only) adds every user's events; those carry
  ``userId``.
* ``{"action":"ping"}`` → ``{"type":"pong"}``; the server sends ``{"type":"heartbeat"}`` every
  ``NOTIFY_HEARTBEAT_INTERVAL`` seconds (25). A JWT connection closes with 4401 when the token
  expires; a service-key one when the key is revoked.

How "no gap, no duplicate" holds: a user's ``seq`` is allocated under a lock in the event's
transaction, so committed seqs are exactly 1..N in commit order. The consumer remembers the last
seq it sent; a live event at or below it is a duplicate and dropped; one above ``last + 1`` means
something is still in flight (or was lost), so the missing range is read from the database first.
Every heartbeat also compares the user's newest seq with the last one sent. Channel-layer messages
are only queued by the handlers; a separate task does the sending and the database reads, so the
layer's channel never backs up behind a slow replay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs

from channels.db import DatabaseSyncToAsync
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from tasks import realtime

logger = logging.getLogger("podi.realtime")

CLOSE_UNAUTHORIZED = 4401
BEARER_PREFIX = "bearer."
REPLAY_BATCH = 500
# A resume may reach this many events back; further is refused (use GET /tasks/{id}/events).
MAX_REPLAY = 10_000
MAX_INBOX = 10_000
MAX_TASK_SUBSCRIPTIONS = 1_000
MAX_TASK_IDS_PER_MESSAGE = 100
SEEN_IDS = 4_096
GROUP_REFRESH_SECONDS = 3_600
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
EVENT_MESSAGE_TYPES = frozenset({*realtime.KNOWN_TYPES, realtime.GENERIC_TYPE})


@dataclass(frozen=True)
class Principal:
    user_id: int
    is_staff: bool
    key_id: int | None
    expires_at: float | None  # epoch seconds (JWT exp); None for service keys


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def token_from_scope(scope) -> tuple[str | None, str | None]:
    """``(token, subprotocol to accept)`` from ``?token=`` or a ``bearer.<token>`` subprotocol."""
    offered = [str(p) for p in scope.get("subprotocols") or []]
    bearer = next((p for p in offered if p.lower().startswith(BEARER_PREFIX)), None)
    others = [p for p in offered if p is not bearer]
    accept = others[0] if others else bearer
    if bearer is not None:
        return bearer[len(BEARER_PREFIX) :] or None, accept
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    token = (query.get("token") or [""])[0].strip()
    return token or None, accept


# --- Database helpers (the only ORM access of the consumer) ----------------------------------

# Sockets' database reads run on a small pool of their own, in parallel (a reconnect storm of a
# thousand sockets must not queue behind one thread) and bounded (so are their connections).
_db_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify-db")


def db_helper(func):
    return DatabaseSyncToAsync(func, thread_sensitive=False, executor=_db_pool)


@db_helper
def authenticate(raw: str) -> Principal | None:
    from podi.auth import principal_from_token
    from podi.errors import AppError
    from podi.models import ServiceKey

    try:
        user, auth = principal_from_token(raw)
    except AppError:
        return None
    if isinstance(auth, ServiceKey):
        return Principal(user.pk, auth.has_scope("admin"), auth.pk, None)
    return Principal(user.pk, bool(user.is_staff), None, float(auth["exp"]))


@db_helper
def principal_state(principal: Principal) -> tuple[bool, int]:
    """(still allowed, the user's newest event seq)."""
    from django.contrib.auth import get_user_model
    from django.db.models import Q
    from django.utils import timezone

    from podi.models import ServiceKey
    from tasks.models import EventCursor

    if principal.key_id is not None:
        allowed = (
            ServiceKey.objects.filter(pk=principal.key_id, revoked_at__isnull=True)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
            .filter(user__is_active=True)
            .exists()
        )
    else:
        allowed = get_user_model().objects.filter(pk=principal.user_id, is_active=True).exists()
    latest = (
        EventCursor.objects.filter(user_id=principal.user_id)
        .values_list("last_seq", flat=True)
        .first()
    )
    return allowed, latest or 0


@db_helper
def events_after(user_id: int, after: int, until: int | None, limit: int) -> list[dict]:
    from tasks.models import TaskEvent

    queryset = TaskEvent.objects.filter(user_id=user_id, seq__gt=after)
    if until is not None:
        queryset = queryset.filter(seq__lte=until)
    return [event.as_message() for event in queryset.order_by("seq")[:limit]]


@db_helper
def followable_tasks(principal: Principal, task_ids: list[str]) -> tuple[set[str], set[str]]:
    """(ids of the caller's own tasks, ids of other users' tasks the caller may follow)."""
    from django.db.models import Q

    from tasks.models import Task

    queryset = Task.objects.filter(public_id__in=task_ids)
    if not principal.is_staff:
        allowed = Q(user_id=principal.user_id)
        if principal.key_id is not None:
            allowed |= Q(service_key_id=principal.key_id)
        queryset = queryset.filter(allowed)
    own, foreign = set(), set()
    for public_id, user_id in queryset.values_list("public_id", "user_id"):
        (own if user_id == principal.user_id else foreign).add(public_id)
    return own, foreign


# --- The consumer -----------------------------------------------------------------------------


class NotifyConsumer(AsyncJsonWebsocketConsumer):
    """One socket of one principal. See the module docstring for the protocol."""

    principal: Principal | None = None

    # Connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        # Accept first: the handshake never waits on the database (Daphne drops handshakes
        # slower than 5 s), and a refused client gets a close code it can read.
        token, subprotocol = token_from_scope(self.scope)
        await self.accept(subprotocol)
        principal = await authenticate(token) if token else None
        if principal is None or (principal.expires_at and principal.expires_at <= time.time()):
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.principal = principal
        self._joined: set[str] = set()
        self._task_ids: set[str] = set()
        self._inbox: deque[dict] = deque()
        self._wake = asyncio.Event()
        self._resume_after: int | None = None
        self._recheck = False
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._groups_refreshed = time.monotonic()
        realtime.attach_serving_loop()
        await self._join(realtime.user_group(principal.user_id))
        # Read after joining: anything committed later reaches us live.
        _, self._last_seq = await principal_state(principal)
        self._heartbeat_interval = float(settings.NOTIFY_HEARTBEAT_INTERVAL)
        await self.send_json(
            {
                "type": "hello",
                "userId": principal.user_id,
                "lastSeq": self._last_seq,
                "heartbeat": self._heartbeat_interval,
            }
        )
        self._tasks = [
            asyncio.create_task(self._pump(), name="notify-pump"),
            asyncio.create_task(self._heartbeat(), name="notify-heartbeat"),
        ]

    async def disconnect(self, code) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        for group in list(getattr(self, "_joined", ())):
            await self.channel_layer.group_discard(group, self.channel_name)
        self._joined = set()

    async def _join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self._joined.add(group)

    # Channel-layer messages: queue only, never wait here --------------------------------------

    async def dispatch(self, message) -> None:
        if message.get("type") in EVENT_MESSAGE_TYPES:
            # Skip Channels' per-message close_old_connections thread hop: these handlers do
            # not touch the database (the pump's helpers manage their own connections).
            await self._queue(message["event"])
            return
        await super().dispatch(message)

    async def task_status(self, message) -> None:
        await self._queue(message["event"])

    async def task_progress(self, message) -> None:
        await self._queue(message["event"])

    async def wallet_points(self, message) -> None:
        await self._queue(message["event"])

    async def notify_event(self, message) -> None:
        await self._queue(message["event"])

    async def _queue(self, event: dict) -> None:
        if self.principal is None:
            return
        if len(self._inbox) >= MAX_INBOX:
            # Our own events come back from the database; foreign ones are lost for this socket.
            self._inbox.clear()
            self._recheck = True
            logger.warning("notify inbox overflow for user %s", self.principal.user_id)
        self._inbox.append(event)
        self._wake.set()

    # Client messages ------------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        if self.principal is None:
            return
        try:
            content = json.loads(text_data if text_data is not None else bytes_data)
        except (TypeError, ValueError):
            await self._error("INVALID_MESSAGE", "Send a JSON object with an 'action'.")
            return
        if not isinstance(content, dict):
            await self._error("INVALID_MESSAGE", "Send a JSON object with an 'action'.")
            return
        action = content.get("action")
        if action == "ping":
            await self.send_json({"type": "pong", "timestamp": _now_iso()})
        elif action == "resume":
            await self._on_resume(content)
        elif action == "subscribe":
            await self._on_subscribe(content)
        else:
            await self._error(
                "INVALID_MESSAGE",
                "Unknown action; use subscribe, resume or ping.",
                {"action": action if isinstance(action, str) else None},
            )

    async def _on_resume(self, content: dict) -> None:
        after = content.get("after")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            await self._error("INVALID_MESSAGE", "'after' must be an integer ≥ 0.")
            return
        self._resume_after = after
        self._wake.set()

    async def _on_subscribe(self, content: dict) -> None:
        principal = self.principal
        if content.get("all") is True:
            if not principal.is_staff:
                await self._error("FORBIDDEN", "Only staff may subscribe to all events.")
                return
            await self._join(realtime.STAFF_GROUP)
            await self.send_json({"type": "subscribed", "all": True})
            return
        task_ids = content.get("taskIds")
        if (
            not isinstance(task_ids, list)
            or not task_ids
            or len(task_ids) > MAX_TASK_IDS_PER_MESSAGE
            or not all(isinstance(t, str) for t in task_ids)
        ):
            await self._error(
                "INVALID_MESSAGE",
                f"'taskIds' must be a list of 1..{MAX_TASK_IDS_PER_MESSAGE} task ids, "
                "or send 'all': true.",
            )
            return
        wanted = list(dict.fromkeys(task_ids))
        valid = [t for t in wanted if TASK_ID_PATTERN.fullmatch(t)]
        own, foreign = await followable_tasks(principal, valid) if valid else (set(), set())
        new_foreign = [t for t in wanted if t in foreign and t not in self._task_ids]
        if len(self._task_ids) + len(new_foreign) > MAX_TASK_SUBSCRIPTIONS:
            await self._error(
                "TOO_MANY_SUBSCRIPTIONS",
                f"At most {MAX_TASK_SUBSCRIPTIONS} task subscriptions per connection.",
            )
            return
        for task_id in new_foreign:
            await self._join(realtime.task_group(task_id))
            self._task_ids.add(task_id)
        accepted = [t for t in wanted if t in own or t in foreign]
        refused = [t for t in wanted if t not in own and t not in foreign]
        await self.send_json({"type": "subscribed", "taskIds": accepted})
        if refused:
            await self._error("TASK_NOT_FOUND", "No such task of yours.", {"taskIds": refused})

    async def _error(self, code: str, message: str, details: dict | None = None) -> None:
        await self.send_json(
            {"type": "error", "code": code, "message": message, "details": details or {}}
        )

    # Sending: one task per socket, in order --------------------------------------------------

    async def _pump(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._resume_after is not None:
                    after, self._resume_after = self._resume_after, None
                    await self._replay(after)
                if self._recheck:
                    self._recheck = False
                    await self._catch_up()
                while self._inbox:
                    await self._deliver(self._inbox.popleft())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("notify stream failed for user %s", self.principal.user_id)
            await self.close(code=1011)

    async def _replay(self, after: int) -> None:
        _, latest = await principal_state(self.principal)
        after = min(after, latest)
        if latest - after > MAX_REPLAY:
            await self._error(
                "RESUME_TOO_FAR",
                f"At most {MAX_REPLAY} events can be replayed; read older ones from "
                "GET /api/tasks/v1/{taskId}/events.",
                {"minAfter": latest - MAX_REPLAY, "lastSeq": latest},
            )
            return
        self._last_seq = after
        count = await self._catch_up()
        await self.send_json(
            {"type": "resumed", "after": after, "lastSeq": self._last_seq, "count": count}
        )

    async def _catch_up(self, until: int | None = None) -> int:
        """Send the caller's persisted events after the last one sent (up to ``until``)."""
        sent = 0
        while True:
            rows = await events_after(self.principal.user_id, self._last_seq, until, REPLAY_BATCH)
            for row in rows:
                await self.send_json(row)
                self._last_seq = row["seq"]
                sent += 1
            if len(rows) < REPLAY_BATCH:
                return sent

    async def _deliver(self, event: dict) -> None:
        seq = event.get("seq")
        if event.get("userId") == self.principal.user_id and isinstance(seq, int):
            if seq <= self._last_seq:
                return  # already sent (replay, gap fill, or another group)
            if seq > self._last_seq + 1:
                await self._catch_up(until=seq - 1)
            await self.send_json(_wire(event))
            self._last_seq = seq
            return
        event_id = event.get("id")
        if event_id in self._seen:
            return
        self._seen[event_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        message = _wire(event)
        if event.get("userId") != self.principal.user_id:
            message["userId"] = event.get("userId")
        await self.send_json(message)

    async def _heartbeat(self) -> None:
        principal = self.principal
        while True:
            delay = self._heartbeat_interval
            if principal.expires_at is not None:
                delay = max(0.0, min(delay, principal.expires_at - time.time()))
            await asyncio.sleep(delay)
            if principal.expires_at is not None and principal.expires_at <= time.time():
                await self.close(code=CLOSE_UNAUTHORIZED)
                return
            allowed, latest = await principal_state(principal)
            if not allowed:
                await self.close(code=CLOSE_UNAUTHORIZED)
                return
            await self.send_json({"type": "heartbeat", "timestamp": _now_iso()})
            if latest > self._last_seq:
                self._recheck = True  # a publish was lost or is late: read it from the database
                self._wake.set()
            if time.monotonic() - self._groups_refreshed > GROUP_REFRESH_SECONDS:
                # Channel layers forget group members after a day; stay a member.
                for group in list(self._joined):
                    await self.channel_layer.group_add(group, self.channel_name)
                self._groups_refreshed = time.monotonic()


def _wire(event: dict) -> dict:
    return {
        "id": event.get("id"),
        "seq": event.get("seq"),
        "type": event.get("type"),
        "payload": event.get("payload"),
        "timestamp": event.get("timestamp"),
    }
