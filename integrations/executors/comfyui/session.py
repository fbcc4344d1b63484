"""One long-lived session per ComfyUI server per worker process (docs/adr/0015-executor-sessions.md).

A session holds one pooled HTTP client and ONE ``/ws`` connection under one ``client_id``; every
prompt this process submits carries that ``client_id``, so ComfyUI sends all their messages down
that socket. A reader thread turns them into progress and notices ``executing`` with
``node: null`` — the last message ComfyUI sends for a prompt, after its history entry is
written — and then the outcome is read with ONE ``GET /history/{id}`` (in a thread of the
caller's ``spawn``, never in the reader). An ``executed`` message's files are handed on to the
follower at once (``on_output``; kept until ``follow`` when the node ran before it), so they can
be fetched while the prompt still runs (docs/adr/0026-outputs-fetched-early.md).

Polling is the fallback: while the socket is down every followed prompt is polled (``/history``,
then one ``/queue`` per round for the lost-prompt rule); prompts submitted under another
``client_id`` (resumed after a worker died) are always polled, as their messages go elsewhere. A
reconnect reads ``/history`` once for each of our prompts, since their end may have been missed.
While the socket is up, a prompt that no message has mentioned for ``SWEEP_EVERY`` seconds is
looked for in ``/queue`` (one read per session per sweep) — a prompt ComfyUI forgot (it
restarted between our ``POST`` and the socket) is caught that way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import WebSocketException

from integrations.executors.base import ExecutorError
from integrations.executors.comfyui.run import ComfyUIRunner

logger = logging.getLogger("podi.executors.comfyui.session")

SWEEP_EVERY = 5.0  # seconds a prompt may go unmentioned on a live socket before /queue is read
RECONNECT_FIRST = 0.2
RECONNECT_MAX = 10.0
CONNECT_WAIT = 2.0  # a new session waits this long for its socket before the first submit
ENDED_EARLY_KEPT = 4096  # prompt ids whose end came before they were followed

Spawn = Callable[..., Any]


@dataclass(eq=False)
class Watch:
    """One followed prompt. ``on_ended(entry, error)`` runs once, in a ``spawn`` thread."""

    prompt_id: str
    on_progress: Callable[[float, dict | None], None]
    on_ended: Callable[[dict | None, ExecutorError | None], None]
    # (node id, its ``ui``) of an ``executed`` message: the node's outputs exist from now on
    on_output: Callable[[str, dict], None] | None = None
    total_nodes: int = 1
    own: bool = True  # submitted under this session's client_id: its messages come to us
    polling: bool = False
    seen: bool = False  # a socket message mentioned it
    confirming: bool = False
    confirm_since: float = 0.0  # when the confirmation under way began (monotonic)
    ended: bool = False
    absent_since: float | None = None
    done_nodes: set[str] = field(default_factory=set)
    heard: float = field(default_factory=time.monotonic)  # the last message about it, or its start

    def confirm(self) -> None:
        """Mark a ``/history`` confirmation as under way (called under the session's lock)."""
        self.confirming, self.confirm_since = True, time.monotonic()


class ComfyUISession:
    def __init__(self, runner: ComfyUIRunner, *, spawn: Spawn, name: str = "comfyui"):
        self.runner = runner
        self.name = name
        self.client_id = f"podi-{uuid.uuid4().hex}"
        runner.open_client()
        self._spawn = spawn
        self._lock = threading.Lock()
        self._watches: dict[str, Watch] = {}
        self._ended_early: OrderedDict[str, None] = OrderedDict()
        # (node, ui) of ``executed`` messages that came before their prompt was followed (a
        # node can run before ``follow`` returns from its ``POST /prompt``)
        self._outputs_early: OrderedDict[str, list[tuple[str, dict]]] = OrderedDict()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._socket = None
        self.connects = 0  # how many times the socket (re)connected, for tests and logs
        self._threads = [
            threading.Thread(target=self._read_loop, name=f"podi-ws-{name}", daemon=True),
            threading.Thread(target=self._poll_loop, name=f"podi-poll-{name}", daemon=True),
        ]

    # --- Lifecycle -----------------------------------------------------------------------

    def start(self, *, wait: float = CONNECT_WAIT) -> ComfyUISession:
        for thread in self._threads:
            thread.start()
        self._connected.wait(wait)
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._watches

    def close(self) -> None:
        self._stopping.set()
        socket = self._socket
        if socket is not None:
            try:
                socket.close()
            except Exception:  # noqa: BLE001 - closing a broken socket may fail any way
                logger.debug("closing the socket of %s failed", self.name, exc_info=True)
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=3)
        if self.runner.client is not None:
            self.runner.client.close()

    # --- Following -----------------------------------------------------------------------

    def follow(
        self,
        prompt_id: str,
        *,
        on_progress: Callable[[float, dict | None], None],
        on_ended: Callable[[dict | None, ExecutorError | None], None],
        on_output: Callable[[str, dict], None] | None = None,
        total_nodes: int = 1,
        own: bool = True,
        check_now: bool = False,
    ) -> Watch:
        """Follow ``prompt_id`` until it ends. ``check_now`` reads ``/history`` at once (a
        resumed run: the prompt may have ended while nobody followed it). ``on_output`` hears
        each node that reported outputs, in the reader thread (it must not block), before the
        prompt ends; ``on_ended`` still decides from ``/history``."""
        watch = Watch(
            prompt_id=prompt_id,
            on_progress=on_progress,
            on_ended=on_ended,
            on_output=on_output,
            total_nodes=max(total_nodes, 1),
            own=own,
            polling=not own,
        )
        with self._lock:
            self._watches[prompt_id] = watch
            outputs = self._outputs_early.pop(prompt_id, [])
            ended = prompt_id in self._ended_early
            if ended:
                del self._ended_early[prompt_id]
            if not self._connected.is_set():
                watch.polling = True
            confirm = ended or check_now
            if confirm:
                watch.confirm()
        for node, ui in outputs if on_output is not None else ():
            self._hand_on(watch, node, ui)
        if confirm:
            self._spawn(self._confirm, watch, ended)
        return watch

    def unfollow(self, prompt_id: str) -> None:
        with self._lock:
            watch = self._watches.pop(prompt_id, None)
            if watch is not None:
                watch.ended = True

    def _claim_end(self, watch: Watch) -> bool:
        with self._lock:
            if watch.ended:
                return False
            watch.ended = True
            self._watches.pop(watch.prompt_id, None)
            return True

    def _confirm(self, watch: Watch, ended: bool = True) -> None:
        """The one ``/history`` read after the socket said the prompt ended (``ended``), after a
        reconnect, or for a resumed run (runs in a spawn thread). Not in history although the
        socket said it ended, or unreadable: polled from now on."""
        try:
            entry = self.runner.history(watch.prompt_id)
        except ExecutorError as exc:
            logger.warning("reading the history of %s failed: %s", watch.prompt_id, exc)
            entry, ended = None, True
        with self._lock:
            watch.confirming = False
            if entry is None and (ended or not self._connected.is_set()):
                watch.polling = True
        if entry is not None and self._claim_end(watch):
            watch.on_ended(entry, None)

    # --- Socket --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        delay = RECONNECT_FIRST
        while not self._stopping.is_set():
            opened = False
            try:
                with self.runner.open_socket(self.client_id) as socket:
                    opened = True
                    delay = RECONNECT_FIRST
                    self._on_connected(socket)
                    while not self._stopping.is_set():
                        try:
                            raw = socket.recv(timeout=1.0)
                        except TimeoutError:
                            continue
                        if isinstance(raw, str):
                            self._on_message(raw)
            except (OSError, WebSocketException, TimeoutError) as exc:
                if not self._stopping.is_set():
                    logger.warning(
                        "ComfyUI socket of %s %s (%s); polling",
                        self.name,
                        "dropped" if opened else "unavailable",
                        exc,
                    )
            finally:
                with self._lock:
                    self._connected.clear()
                    self._socket = None
            if not opened:
                self._stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)

    def _on_connected(self, socket) -> None:
        with self._lock:
            self._socket = socket
            self.connects += 1
            again = [w for w in self._watches.values() if w.own and not w.confirming]
            for watch in again:
                # Its end may have passed while the socket was down: read /history once.
                watch.polling = False
                watch.confirm()
            self._connected.set()
        for watch in again:
            self._spawn(self._confirm, watch, False)

    def _on_message(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        data = message.get("data")
        if not isinstance(data, dict) or not data.get("prompt_id"):
            return
        prompt_id = data["prompt_id"]
        ended = kind == "executing" and data.get("node") is None
        output = self._output_of(data) if kind == "executed" else None
        with self._lock:
            watch = self._watches.get(prompt_id)
            if watch is None:
                if ended:
                    self._ended_early[prompt_id] = None
                    while len(self._ended_early) > ENDED_EARLY_KEPT:
                        self._ended_early.popitem(last=False)
                elif output is not None:
                    self._outputs_early.setdefault(prompt_id, []).append(output)
                    while len(self._outputs_early) > ENDED_EARLY_KEPT:
                        self._outputs_early.popitem(last=False)
                return
            watch.seen, watch.heard = True, time.monotonic()
            if ended:
                if watch.ended or watch.confirming:
                    return
                watch.confirm()
        if ended:
            self._spawn(self._confirm, watch, True)
            return
        if output is not None and watch.on_output is not None:
            self._hand_on(watch, *output)
        percent, detail = self._progress_of(watch, kind, data)
        if percent is not None:
            watch.on_progress(percent, detail)

    @staticmethod
    def _output_of(data: dict) -> tuple[str, dict] | None:
        """(node id, ui) of an ``executed`` message that names outputs."""
        node, ui = data.get("node"), data.get("output")
        return (str(node), ui) if node is not None and isinstance(ui, dict) else None

    @staticmethod
    def _hand_on(watch: Watch, node: str, ui: dict) -> None:
        try:
            watch.on_output(node, ui)
        except Exception:  # the reader must live on: the conclusion fetches them anyway
            logger.exception("handing on the outputs of %s failed", watch.prompt_id)

    @staticmethod
    def _progress_of(watch: Watch, kind: Any, data: dict) -> tuple[float | None, dict | None]:
        done = watch.done_nodes
        if kind == "execution_cached":
            done.update(str(n) for n in data.get("nodes") or [])
        elif kind == "progress_state":
            nodes = data.get("nodes") or {}
            if isinstance(nodes, dict):
                watch.total_nodes = max(watch.total_nodes, len(nodes))
                done.update(
                    str(n)
                    for n, s in nodes.items()
                    if isinstance(s, dict) and s.get("state") == "finished"
                )
        elif kind == "executed" and data.get("node") is not None:
            done.add(str(data["node"]))
        elif kind == "progress" and data.get("max"):
            try:
                within = float(data.get("value", 0)) / float(data["max"])
            except (TypeError, ValueError, ZeroDivisionError):
                return None, None
            return 100 * (len(done) + within) / watch.total_nodes, {"node": data.get("node")}
        else:
            return None, None
        return 100 * len(done) / watch.total_nodes, None

    # --- Fallback polling ----------------------------------------------------------------

    def _poll_loop(self) -> None:
        next_sweep = time.monotonic() + SWEEP_EVERY
        while not self._stopping.wait(self.runner.poll_every):
            try:
                now = time.monotonic()
                with self._lock:
                    watches = [w for w in self._watches.values() if not w.ended]
                    connected = self._connected.is_set()
                if not watches:
                    continue
                self._retry_stale_confirms(watches, now)
                due = [w for w in watches if not w.confirming and (w.polling or not connected)]
                if connected and now >= next_sweep:
                    next_sweep = now + SWEEP_EVERY
                    due += self._sweep(watches, now)
                if due:
                    self._poll(due)
            except Exception:  # never let the poller die: log, and try again next round
                logger.exception("polling ComfyUI %s failed", self.name)

    def _retry_stale_confirms(self, watches: list[Watch], now: float) -> None:
        """A confirmation that never came back (its thread died, or never got to run) must not
        leave its prompt unfollowed: the prompt is polled instead."""
        with self._lock:
            stale = [
                w
                for w in watches
                if w.confirming
                and not w.ended
                and now - w.confirm_since > self.runner.confirm_stale
            ]
            for watch in stale:
                watch.confirming, watch.polling = False, True
        for watch in stale:
            logger.warning(
                "confirming %s on %s took over %.0f s; polling it", watch.prompt_id, self.name,
                self.runner.confirm_stale,
            )  # fmt: skip

    def _sweep(self, watches: list[Watch], now: float) -> list[Watch]:
        """Prompts no socket message has mentioned for a while: still in the queue? (Also one
        whose progress was heard but whose end was not: a message can be lost.)"""
        quiet = [
            w
            for w in watches
            if w.own and not w.polling and not w.confirming and now - w.heard > SWEEP_EVERY
        ]
        if not quiet:
            return []
        try:
            queued = self.runner.queued_ids()
        except ExecutorError:
            return []
        missing = [w for w in quiet if w.prompt_id not in queued]
        for watch in missing:
            watch.polling = True
        return missing

    def _poll(self, due: list[Watch]) -> None:
        queued: set[str] | None = None
        for watch in due:
            if self._stopping.is_set():
                return
            try:
                entry = self.runner.history(watch.prompt_id)
                if entry is None and queued is None:
                    queued = self.runner.queued_ids()
            except ExecutorError as exc:
                logger.info("polling %s on %s failed: %s", watch.prompt_id, self.name, exc)
                return
            if entry is not None:
                if self._claim_end(watch):
                    self._spawn(watch.on_ended, entry, None)
                continue
            if watch.prompt_id in (queued or ()):
                watch.absent_since = None
            elif watch.absent_since is None:
                watch.absent_since = time.monotonic()
            elif time.monotonic() - watch.absent_since > self.runner.lost_after:
                if self._claim_end(watch):
                    self._spawn(watch.on_ended, None, self.runner.lost_error(watch.prompt_id))
