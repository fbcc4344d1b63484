"""The live event stream: ``/api/notify/v1/stream`` (docs/adr/0006-live-events.md).

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
  (the tasks app's access rule: staff and service-account keys with ``tasks:read`` any; a user or
  user-bound key none, docs/architecture.md §5); the caller's own tasks are always
  included (who may follow which task is the ``"task"`` access check the tasks app registers
  with ``podi.realtime.events.register_followable``). Refused ids get one
  ``{"type":"error","code":"TASK_NOT_FOUND"}`` and nothing else.
  ``{"action":"subscribe","all":true}`` (staff, or a service-account key with ``admin``) adds
  every user's events; those carry
  ``userId``.
* ``{"action":"ping"}`` → ``{"type":"pong"}``; the server sends ``{"type":"heartbeat"}`` every
  ``NOTIFY_HEARTBEAT_INTERVAL`` seconds (25). A JWT connection closes with 4401 when the token
  expires; any connection when its user is deactivated or its service key revoked.

How "no gap, no duplicate" holds: a user's ``seq`` is allocated under a lock in the event's
transaction, so committed seqs are exactly 1..N in commit order. The consumer remembers the last
seq it sent; a live event at or below it is a duplicate and dropped; one above ``last + 1`` means
something is still in flight (or was lost), so the missing range is read from the database first.
Once per heartbeat interval the process compares every connected user's newest seq with what
its sockets sent, so even a lost last event arrives.

How it scales: each web process has one :class:`Hub` per event loop. The hub is the process's only
reader of the channel layer: it joins the groups its sockets need (``user.<id>``,
``task.<tsk_…>``, ``staff``), receives each event once, and hands it to the local sockets, which
queue it and send from a task of their own. Nothing here waits on a client: Daphne buffers what a
slow client has not read, and drops it when its pings go unanswered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import parse_qs

from channels.db import DatabaseSyncToAsync
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from podi.auth import access_token_revoked, principal_from_token
from podi.errors import AppError, ErrorCode
from podi.models import ServiceKey
from podi.realtime import error_codes as codes
from podi.realtime import publisher, selectors
from podi.realtime.events import Principal, followable, stream_payload_for_sending

logger = logging.getLogger("podi.realtime")
# Pump failures in a row (with back-off, about 40 s) before the stream closes with 1011.
PUMP_GIVE_UP = 12

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


def resume_from_scope(scope) -> int | None:
    """``?after=N`` in the URL: resume before anything live is sent; -1 when malformed."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "after" not in query:
        return None
    raw = query["after"][0].strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else -1


def event_text(event: dict, *, with_user: bool) -> str:
    """The wire form of ``event``, encoded once per process however many sockets get it. The
    payload goes through the apps' stream hooks first (a task's outputs get signed URLs, made
    now: a replay an hour later gets fresh ones)."""
    cache_key = "__text_user" if with_user else "__text"
    text = event.get(cache_key)
    if text is None:
        if "__payload" not in event:  # once per event, for both wire forms
            event["__payload"] = stream_payload_for_sending(
                str(event.get("type")), event.get("payload")
            )
        wire = {
            "id": event.get("id"),
            "seq": event.get("seq"),
            "type": event.get("type"),
            "payload": event["__payload"],
            "timestamp": event.get("timestamp"),
        }
        if with_user:
            wire["userId"] = event.get("userId")
        text = event[cache_key] = json.dumps(wire)
    return text


# --- Database helpers (the only ORM access of the consumer) ----------------------------------

# Sockets' database reads run on a small pool of their own, in parallel (a reconnect storm of a
# thousand sockets must not queue behind one thread) and bounded (so are their connections).
_db_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify-db")


def db_helper(func):
    return DatabaseSyncToAsync(func, thread_sensitive=False, executor=_db_pool)


@db_helper
def authenticate(raw: str) -> tuple[Principal, int, dict | None] | None:
    """The principal of a raw token, its user's newest event seq and (for a user's JWT) the
    token's claims, which the hub's check tests for revocation; or None."""
    try:
        user, auth = principal_from_token(raw)
    except AppError:
        return None
    if isinstance(auth, ServiceKey):
        return Principal.for_key(auth), selectors.latest_seq(user_id=user.pk), None
    claims = {name: auth.get(name) for name in ("jti", "iat", "user_id")}
    principal = Principal.for_user(user, expires_at=float(auth["exp"]))
    return principal, selectors.latest_seq(user_id=user.pk), claims


@db_helper
def revoked_tokens(claims: list[dict]) -> list[bool]:
    """For the hub's periodic check: which of these access tokens were revoked by a logout
    (podi.auth keeps the deny list; docs/adr/0010-security-hardening.md)."""
    return [access_token_revoked(item) for item in claims]


@db_helper
def latest_seq(user_id: int) -> int:
    return selectors.latest_seq(user_id=user_id)


@db_helper
def sockets_state(user_ids: set[int], key_ids: set[int]) -> tuple[set, set, dict[int, int]]:
    """For the hub's periodic check, in three queries whatever the number of sockets:
    (active user ids, usable service key ids, newest seq by user id)."""
    active, keys = selectors.usable_principals(user_ids=user_ids, key_ids=key_ids)
    return active, keys, selectors.latest_seqs(user_ids=user_ids)


@db_helper
def events_after(user_id: int, after: int, until: int | None, limit: int) -> list[dict]:
    return selectors.events_after(user_id=user_id, after=after, until=until, limit=limit)


@db_helper
def followable_tasks(principal: Principal, task_ids: list[str]) -> tuple[set[str], set[str]]:
    """(ids of the caller's own tasks, ids of other users' tasks the caller may follow)."""
    return followable("task", principal, task_ids)


# --- The hub: one channel-layer reader per process and event loop ----------------------------


class Hub:
    """Receives events from the channel layer once and hands them to this process's sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, layer) -> None:
        self.loop = loop
        self.layer = layer
        self.channel: str | None = None
        self.by_user: dict[int, set[NotifyConsumer]] = {}
        self.by_task: dict[str, set[NotifyConsumer]] = {}
        self.everything: set[NotifyConsumer] = set()
        self.joined: set[str] = set()
        self.membership = asyncio.Lock()
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.joined_at = time.monotonic()
        self.tasks: list[asyncio.Task] = []
        self.started: asyncio.Future | None = None

    async def start(self) -> None:
        if self.layer is not None:
            self.channel = await self.layer.new_channel("notify.")
            self.tasks.append(asyncio.create_task(self._receive(), name="notify-hub"))
        self.tasks.append(asyncio.create_task(self._watch(), name="notify-watch"))

    # Membership -------------------------------------------------------------------------------

    async def attach(self, consumer: NotifyConsumer) -> None:
        self.by_user.setdefault(consumer.principal.user_id, set()).add(consumer)
        await self._join(publisher.user_group(consumer.principal.user_id))

    async def follow_task(self, consumer: NotifyConsumer, task_id: str) -> None:
        self.by_task.setdefault(task_id, set()).add(consumer)
        await self._join(publisher.task_group(task_id))

    async def follow_everything(self, consumer: NotifyConsumer) -> None:
        self.everything.add(consumer)
        await self._join(publisher.STAFF_GROUP)

    def detach(self, consumer: NotifyConsumer) -> None:
        """Forget a socket; groups nobody here needs any more are left at the next check."""
        for table, key in [(self.by_user, consumer.principal.user_id)] + [
            (self.by_task, task_id) for task_id in consumer.task_ids
        ]:
            members = table.get(key)
            if members is not None:
                members.discard(consumer)
                if not members:
                    del table[key]
        self.everything.discard(consumer)

    def _needed(self, group: str) -> bool:
        kind, _, name = group.partition(".")
        if group == publisher.STAFF_GROUP:
            return bool(self.everything)
        if kind == "user":
            return int(name) in self.by_user
        return name in self.by_task

    def _needed_groups(self) -> set[str]:
        groups = {publisher.user_group(uid) for uid in self.by_user}
        groups |= {publisher.task_group(tid) for tid in self.by_task}
        if self.everything:
            groups.add(publisher.STAFF_GROUP)
        return groups

    async def _join(self, group: str) -> None:
        if self.layer is None or group in self.joined:
            return
        async with self.membership:  # joins and leaves happen in order
            if group in self.joined:
                return
            try:
                await self.layer.group_add(group, self.channel)
            except Exception:  # the layer is down: the next check joins again
                logger.exception("notify hub could not join %s", group)
                return
            self.joined.add(group)

    async def _tidy_groups(self) -> None:
        if self.layer is None:
            return
        async with self.membership:
            for group in list(self.joined):
                if not self._needed(group):
                    self.joined.discard(group)  # before awaiting: a new member re-joins after us
                    await self.layer.group_discard(group, self.channel)
            refresh = time.monotonic() - self.joined_at > GROUP_REFRESH_SECONDS
            if refresh:  # layers forget members after a day
                self.joined_at = time.monotonic()
                self.joined.clear()
        for group in self._needed_groups() - self.joined:
            await self._join(group)

    # Events -----------------------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("notify hub could not read the channel layer")
                await asyncio.sleep(1)
                continue
            event = message.get("event")
            if isinstance(event, dict):
                self.route(event)
            for event in message.get("events") or ():  # a batch (ADR 0032)
                if isinstance(event, dict):
                    self.route(event)

    def route(self, event: dict) -> None:
        event_id = event.get("id")
        if event_id in self.seen:  # the same event through the user, task and staff groups
            return
        self.seen[event_id] = None
        if len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        targets = set(self.by_user.get(event.get("userId"), ()))
        if event.get("taskId"):
            targets |= self.by_task.get(event["taskId"], set())
        targets |= self.everything
        for consumer in targets:
            consumer.push(event)

    # The periodic check ----------------------------------------------------------------------

    async def _watch(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, float(settings.NOTIFY_HEARTBEAT_INTERVAL)))
            if time.monotonic() - last < float(settings.NOTIFY_HEARTBEAT_INTERVAL):
                continue
            last = time.monotonic()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("notify hub check failed")

    async def check(self) -> None:
        """Close sockets whose user or key was disabled; wake those behind the database."""
        consumers = [c for members in self.by_user.values() for c in members]
        if consumers:
            user_ids = {c.principal.user_id for c in consumers}
            key_ids = {c.principal.key_id for c in consumers if c.principal.key_id is not None}
            active, keys, latest = await sockets_state(user_ids, key_ids)
            with_claims = [c for c in consumers if c.claims is not None]
            revoked = await revoked_tokens([c.claims for c in with_claims])
            logged_out = {id(c) for c, gone in zip(with_claims, revoked, strict=True) if gone}
            for consumer in consumers:
                principal = consumer.principal
                if (
                    principal.user_id not in active
                    or (principal.key_id is not None and principal.key_id not in keys)
                    or id(consumer) in logged_out
                ):
                    await consumer.close(code=CLOSE_UNAUTHORIZED)
                elif latest.get(principal.user_id, 0) > consumer.last_seq:
                    consumer.recheck()
        await self._tidy_groups()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


async def hub() -> Hub:
    """This event loop's hub, started on first use."""
    loop = asyncio.get_running_loop()
    current = _hubs.get(loop)
    if current is None:
        layer = get_channel_layer() if publisher.uses_channel_layer() else None
        current = _hubs[loop] = Hub(loop, layer)
        if layer is None:  # embedded: the publisher hands events straight to us
            publisher.publisher.attach_local(loop, current.route)
        current.started = asyncio.ensure_future(current.start())
    await current.started
    return current


# --- The consumer -----------------------------------------------------------------------------


class NotifyConsumer(AsyncWebsocketConsumer):
    """One socket of one principal. See the module docstring for the protocol."""

    # No channel of its own: events come from the process's hub (one layer reader, not one per
    # socket). There is no layer of this name, so Channels gives the consumer none.
    channel_layer_alias = "notify-sockets-use-the-hub"

    principal: Principal | None = None
    task_ids: frozenset[str] = frozenset()
    last_seq: int = 0
    claims: dict | None = None

    # Connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        # Accept first: the handshake never waits on the database (Daphne drops handshakes
        # slower than 5 s), and a refused client gets a close code it can read.
        token, subprotocol = token_from_scope(self.scope)
        await self.accept(subprotocol)
        opened = await authenticate(token) if token else None
        if opened is None or (opened[0].expires_at and opened[0].expires_at <= time.time()):
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        principal, self.last_seq, self.claims = opened
        self.principal = principal
        # Every event with _sent_from < seq <= last_seq has been sent on this socket.
        self._sent_from = self.last_seq
        self._inbox: deque[dict] = deque()
        self._wake = asyncio.Event()
        self._resume_after: int | None = None
        self._recheck = False
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._hub = await hub()
        await self._hub.attach(self)
        # Anything committed after the seq read above either reaches us live now, or is read
        # from the database when the next event (or the hub's check) shows the gap.
        self._heartbeat_interval = float(settings.NOTIFY_HEARTBEAT_INTERVAL)
        await self._send(
            {
                "type": "hello",
                "userId": principal.user_id,
                "lastSeq": self.last_seq,
                "heartbeat": self._heartbeat_interval,
            }
        )
        after = resume_from_scope(self.scope)
        if after == -1:
            await self._error(codes.INVALID_MESSAGE, "'after' must be an integer ≥ 0.")
        elif after is not None:  # ?after=N: the replay comes before any live event
            self._resume_after = after
            self._wake.set()
        self._tasks = [
            asyncio.create_task(self._pump(), name="notify-pump"),
            asyncio.create_task(self._heartbeat(), name="notify-heartbeat"),
        ]
        # The first check after connect closes the window between the seq read and joining.
        self.recheck()

    async def disconnect(self, code) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        if self.principal is not None and getattr(self, "_hub", None) is not None:
            self._hub.detach(self)

    # From the hub: queue only, never wait here -------------------------------------------------

    def push(self, event: dict) -> None:
        if len(self._inbox) >= MAX_INBOX:
            # Our own events come back from the database; foreign ones are lost for this socket.
            self._inbox.clear()
            self._recheck = True
            logger.warning("notify inbox overflow for user %s", self.principal.user_id)
        self._inbox.append(event)
        self._wake.set()

    def recheck(self) -> None:
        self._recheck = True
        self._wake.set()

    # Client messages ------------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.principal is None:
            return
        try:
            content = json.loads(text_data if text_data is not None else bytes_data)
        except (TypeError, ValueError):
            content = None
        if not isinstance(content, dict):
            await self._error(codes.INVALID_MESSAGE, "Send a JSON object with an 'action'.")
            return
        action = content.get("action")
        if action == "ping":
            await self._send({"type": "pong", "timestamp": _now_iso()})
        elif action == "resume":
            await self._on_resume(content)
        elif action == "subscribe":
            await self._on_subscribe(content)
        else:
            await self._error(
                codes.INVALID_MESSAGE,
                "Unknown action; use subscribe, resume or ping.",
                {"action": action if isinstance(action, str) else None},
            )

    async def _on_resume(self, content: dict) -> None:
        after = content.get("after")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            await self._error(codes.INVALID_MESSAGE, "'after' must be an integer ≥ 0.")
            return
        self._resume_after = after
        self._wake.set()

    async def _on_subscribe(self, content: dict) -> None:
        principal = self.principal
        if content.get("all") is True:
            if not principal.is_operator:
                await self._error(codes.FORBIDDEN, "Only staff may subscribe to all events.")
                return
            await self._hub.follow_everything(self)
            await self._send({"type": "subscribed", "all": True})
            return
        task_ids = content.get("taskIds")
        if (
            not isinstance(task_ids, list)
            or not task_ids
            or len(task_ids) > MAX_TASK_IDS_PER_MESSAGE
            or not all(isinstance(t, str) for t in task_ids)
        ):
            await self._error(
                codes.INVALID_MESSAGE,
                f"'taskIds' must be a list of 1..{MAX_TASK_IDS_PER_MESSAGE} task ids, "
                "or send 'all': true.",
            )
            return
        wanted = list(dict.fromkeys(task_ids))
        valid = [t for t in wanted if TASK_ID_PATTERN.fullmatch(t)]
        own, foreign = await followable_tasks(principal, valid) if valid else (set(), set())
        new_foreign = [t for t in wanted if t in foreign and t not in self.task_ids]
        if len(self.task_ids) + len(new_foreign) > MAX_TASK_SUBSCRIPTIONS:
            await self._error(
                codes.TOO_MANY_SUBSCRIPTIONS,
                f"At most {MAX_TASK_SUBSCRIPTIONS} task subscriptions per connection.",
            )
            return
        self.task_ids = self.task_ids | frozenset(new_foreign)
        for task_id in new_foreign:
            await self._hub.follow_task(self, task_id)
        accepted = [t for t in wanted if t in own or t in foreign]
        refused = [t for t in wanted if t not in own and t not in foreign]
        await self._send({"type": "subscribed", "taskIds": accepted})
        if refused:
            await self._error(codes.TASK_NOT_FOUND, "No such task of yours.", {"taskIds": refused})

    async def _send(self, message: dict) -> None:
        await self.send(text_data=json.dumps(message))

    async def _error(self, code: ErrorCode, message: str, details: dict | None = None) -> None:
        await self._send(
            {"type": "error", "code": code.code, "message": message, "details": details or {}}
        )

    # Sending: one task per socket, in order --------------------------------------------------

    async def _pump(self) -> None:
        """Send what the hub queued, replays and catch-ups, in seq order, one at a time.

        A failure (the database refused a catch-up read during an outage or overload) does not
        end the stream: every event of the user is persisted, so after a short back-off the pump
        catches up from the last seq it sent and nothing is missed. Only a failure that lasts
        (``PUMP_GIVE_UP`` in a row) closes the socket with 1011, and then for good: the client
        reconnects with ``?after=``.
        """
        failures = 0
        while True:
            try:
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
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                logger.exception(
                    "notify stream failed for user %s (%s in a row)",
                    self.principal.user_id,
                    failures,
                )
                if failures >= PUMP_GIVE_UP:
                    await self._close_for_good(1011)
                    return
                await asyncio.sleep(min(0.25 * 2**failures, 5.0))
                self._recheck = True
                self._wake.set()

    async def _close_for_good(self, code: int) -> None:
        """Close the socket and stop this socket's other loops (the heartbeat keeps a closed
        socket looking alive otherwise)."""
        current = asyncio.current_task()
        for task in getattr(self, "_tasks", []):
            if task is not current:
                task.cancel()
        await self.close(code=code)

    async def _replay(self, after: int) -> None:
        """Send the persisted events after ``after`` that this socket has not sent yet."""
        latest = await latest_seq(self.principal.user_id)
        after = min(after, latest)
        if self._sent_from - after > MAX_REPLAY:
            await self._error(
                codes.RESUME_TOO_FAR,
                f"At most {MAX_REPLAY} events can be replayed; read older ones from "
                "GET /api/tasks/v1/{taskId}/events.",
                {"minAfter": self._sent_from - MAX_REPLAY, "lastSeq": latest},
            )
            return
        count = 0
        if after < self._sent_from:
            count = await self._send_range(after, self._sent_from)
            self._sent_from = after
        count += await self._catch_up()
        await self._send(
            {"type": "resumed", "after": after, "lastSeq": self.last_seq, "count": count}
        )

    async def _send_range(self, after: int, until: int) -> int:
        """Send the persisted events with ``after < seq <= until``, in order."""
        sent = 0
        while True:
            rows = await events_after(self.principal.user_id, after, until, REPLAY_BATCH)
            for row in rows:
                await self.send(text_data=event_text(row, with_user=False))
                after = row["seq"]
                sent += 1
            if len(rows) < REPLAY_BATCH:
                return sent

    async def _catch_up(self, until: int | None = None) -> int:
        """Send the persisted events after the last one sent (up to ``until``)."""
        sent = 0
        while True:
            rows = await events_after(self.principal.user_id, self.last_seq, until, REPLAY_BATCH)
            for row in rows:
                await self.send(text_data=event_text(row, with_user=False))
                self.last_seq = row["seq"]
                sent += 1
            if len(rows) < REPLAY_BATCH:
                return sent

    async def _deliver(self, event: dict) -> None:
        seq = event.get("seq")
        own = event.get("userId") == self.principal.user_id
        if own and isinstance(seq, int):
            if seq <= self.last_seq:
                return  # already sent (replay, gap fill, or another group)
            if seq > self.last_seq + 1:
                await self._catch_up(until=seq - 1)
            await self.send(text_data=event_text(event, with_user=False))
            self.last_seq = seq
            return
        event_id = event.get("id")
        if event_id in self._seen:
            return
        self._seen[event_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        await self.send(text_data=event_text(event, with_user=not own))

    async def _heartbeat(self) -> None:
        expires_at = self.principal.expires_at
        while True:
            delay = self._heartbeat_interval
            if expires_at is not None:
                delay = max(0.0, min(delay, expires_at - time.time()))
            await asyncio.sleep(delay)
            if expires_at is not None and expires_at <= time.time():
                await self.close(code=CLOSE_UNAUTHORIZED)
                return
            await self._send({"type": "heartbeat", "timestamp": _now_iso()})
