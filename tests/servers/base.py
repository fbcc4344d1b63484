"""Harness that runs an aiohttp application on 127.0.0.1 in a background thread.

Each :class:`LoopbackServer` owns one thread with its own asyncio event loop and one listening
socket on ``127.0.0.1`` (port chosen by the OS unless given). Tests talk to it over real HTTP and
WebSocket connections, exactly as the production code talks to ComfyUI or Coze.

Public API (all methods are called from the test thread)::

    srv = SomeServer()          # nothing listens yet
    srv.start()                 # returns srv; binds 127.0.0.1:<free port>
    srv.url                     # "http://127.0.0.1:PORT"
    srv.ws_url                  # "ws://127.0.0.1:PORT"
    srv.port, srv.host, srv.running
    srv.requests                # snapshot list[RecordedRequest] (thread-safe)
    srv.requests_to("/prompt", method="POST")   # filtered snapshot (also matches "/api/prompt")
    srv.clear_requests()
    srv.wait_until(pred, timeout=5.0)           # poll a predicate, raise TimeoutError
    srv.call(fn, *args)         # run fn(*args) inside the server loop, return its result
    srv.kill()                  # crash: abort every connection + close listener, state lost
    srv.restart()               # same port, empty state (kills first if still running)
    srv.stop()                  # graceful: closes websockets (1001), stops within 2 s
    with SomeServer() as srv: ...   # start()/stop()

Subclasses implement :meth:`setup_routes`, optionally :meth:`extra_middlewares`,
:meth:`reset_state` (called at construction and on restart), :meth:`on_started` (inside the loop,
e.g. to spawn worker tasks with :meth:`spawn`) and :meth:`on_stopping`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["LoopbackServer", "RecordedRequest"]

_JSON_TYPES = ("application/json", "text/json", "text/plain", "")
# aiohttp >= 3.14 prefers typed request keys; fall back to a plain string on older versions.
_RECORD_KEY: Any = (
    web.RequestKey("podi_record", object)  # type: ignore[attr-defined]
    if hasattr(web, "RequestKey")
    else "podi_record"
)


@dataclass
class RecordedRequest:
    """One HTTP request as the server saw it (before any knob changed the answer)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    """Parsed JSON body, or None (no body, not JSON, multipart...)."""
    body: bytes | None = None
    """Raw body for non-multipart requests (None for multipart and for GET without body)."""
    form: dict[str, Any] | None = None
    """Filled by multipart handlers: field name -> value, files as {"filename", "size"}."""
    time: float = field(default_factory=time.time)

    @property
    def api_path(self) -> str:
        """The path with a leading ``/api`` prefix removed (ComfyUI serves both forms)."""
        if self.path == "/api" or self.path.startswith("/api/"):
            return self.path[4:] or "/"
        return self.path


class LoopbackServer:
    """Base class: an aiohttp app on 127.0.0.1 in its own thread and event loop."""

    host = "127.0.0.1"
    #: aiohttp ``client_max_size`` (bytes); bigger bodies get 413.
    client_max_size = 100 * 1024 * 1024
    #: seconds the graceful stop waits for websocket close handshakes before aborting.
    ws_close_timeout = 0.5

    def __init__(self, port: int = 0) -> None:
        self._requested_port = port
        self.port: int | None = None
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.BaseSite | None = None
        self._tasks: set[asyncio.Task] = set()
        self._websockets: set[web.WebSocketResponse] = set()
        self.running = False
        self.reset_state()

    # ------------------------------------------------------------------ hooks for subclasses
    def reset_state(self) -> None:
        """Reset the server-side state (queue, history...). Called at init and on restart."""

    def setup_routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_middlewares(self) -> list:
        """Middlewares placed *inside* the request-recording middleware."""
        return []

    async def on_started(self) -> None:
        """Runs inside the loop once the socket listens."""

    async def on_stopping(self) -> None:
        """Runs inside the loop before websockets are closed and tasks cancelled."""

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """Requests whose path (with or without the ``/api`` prefix) equals ``path``."""
        out = []
        for r in self.requests:
            if (r.path == path or r.api_path == path) and (
                method is None or r.method == method.upper()
            ):
                out.append(r)
        return out

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LoopbackServer:
        if self.running:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port if self.port is not None else self._requested_port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]

        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            try:
                loop.run_forever()
            finally:
                try:
                    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                    for t in pending:
                        t.cancel()
                    if pending:
                        loop.run_until_complete(asyncio.wait(pending, timeout=0.5))
                except Exception:  # pragma: no cover - best effort
                    pass
                loop.close()

        self._thread = threading.Thread(
            target=run, name=f"{type(self).__name__}:{self.port}", daemon=True
        )
        self._thread.start()
        started.wait(5)
        fut = asyncio.run_coroutine_threadsafe(self._async_start(sock), loop)
        try:
            fut.result(timeout=10)
        except BaseException:
            self._shutdown_loop()
            raise
        self.running = True
        return self

    def stop(self) -> None:
        """Graceful stop: websockets get a 1001 close, open requests are cut after ~0.5 s."""
        self._stop(abrupt=False)

    def kill(self) -> None:
        """Simulate a crash: abort every TCP connection (no close frames), close the listener.

        The server-side state is considered lost; :meth:`restart` brings the server back on the
        same port with empty state. Observation logs (``requests`` and subclass logs) are kept.
        """
        self._stop(abrupt=True)

    def restart(self) -> LoopbackServer:
        """Come back on the same port with empty state (like a restarted process)."""
        if self.running:
            self._stop(abrupt=True)
        self.reset_state()
        return self.start()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __del__(self) -> None:  # pragma: no cover - safety net
        try:
            if self.running:
                self._stop(abrupt=True)
        except Exception:
            pass

    # ------------------------------------------------------------------ helpers for tests
    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> Any:
        """Run ``fn(*args)`` (sync or async) inside the server loop and return its result."""
        if not self._loop:
            raise RuntimeError("server not started")

        async def runner() -> Any:
            res = fn(*args)
            if asyncio.iscoroutine(res):
                res = await res
            return res

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout)

    @staticmethod
    def wait_until(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
        """Poll ``pred`` until it returns something truthy; return it or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            val = pred()
            if val:
                return val
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)

    # ------------------------------------------------------------------ for subclasses (in loop)
    def spawn(self, coro: Any) -> asyncio.Task:
        """Start a background task that is cancelled when the server stops."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def track_websocket(self, ws: web.WebSocketResponse) -> None:
        self._websockets.add(ws)

    def untrack_websocket(self, ws: web.WebSocketResponse) -> None:
        self._websockets.discard(ws)

    def abort_websockets(self) -> None:
        """Cut every websocket's TCP connection without a close frame (in loop)."""
        for ws in list(self._websockets):
            self._abort_ws(ws)

    @staticmethod
    def _abort_ws(ws: web.WebSocketResponse) -> None:
        req = getattr(ws, "_req", None)
        transport = getattr(req, "transport", None) if req is not None else None
        if transport is not None:
            transport.abort()

    def record(self, request: web.Request) -> RecordedRequest | None:
        """The RecordedRequest of an in-flight request (to add ``form`` data)."""
        return request.get(_RECORD_KEY)

    # ------------------------------------------------------------------ internals
    @web.middleware
    async def _record_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        ctype = request.content_type if request.body_exists else ""
        body: bytes | None = None
        parsed: Any = None
        if request.body_exists and not ctype.startswith("multipart/"):
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise
            if ctype in _JSON_TYPES or ctype.endswith("+json"):
                try:
                    parsed = json.loads(body) if body else None
                except (ValueError, UnicodeDecodeError):
                    parsed = None
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            json=parsed,
            body=body,
        )
        request[_RECORD_KEY] = rec
        with self._lock:
            self._requests.append(rec)
        return await handler(request)

    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.client_max_size,
            middlewares=[self._record_middleware, *self.extra_middlewares()],
        )
        self.setup_routes(app)
        return app

    async def _async_start(self, sock: socket.socket) -> None:
        app = self._build_app()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.3, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner, self._site = runner, site
        await self.on_started()

    async def _async_stop(self, abrupt: bool) -> None:
        runner = self._runner
        if abrupt:
            # Close the listener first so nobody reconnects, then cut every connection.
            if self._site is not None:
                srv = getattr(self._site, "_server", None)
                if srv is not None:
                    srv.close()
            if runner is not None and runner.server is not None:
                for handler in runner.server.connections:
                    tr = handler.transport
                    if tr is not None:
                        tr.abort()
            self.abort_websockets()
        try:
            await asyncio.wait_for(self.on_stopping(), 0.5)
        except Exception:
            pass
        if not abrupt:
            closes = [
                asyncio.wait_for(
                    ws.close(code=1001, message=b"server shutdown"), self.ws_close_timeout
                )
                for ws in list(self._websockets)
            ]
            if closes:
                await asyncio.gather(*closes, return_exceptions=True)
            self.abort_websockets()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=0.3)
        if runner is not None:
            try:
                await asyncio.wait_for(runner.cleanup(), 1.0)
            except Exception:
                # Force-close what is left.
                if runner.server is not None:
                    for handler in runner.server.connections:
                        if handler.transport is not None:
                            handler.transport.abort()
        self._websockets.clear()
        self._runner = None
        self._site = None

    def _stop(self, abrupt: bool) -> None:
        if not self.running or self._loop is None:
            return
        self.running = False
        fut = asyncio.run_coroutine_threadsafe(self._async_stop(abrupt), self._loop)
        try:
            fut.result(timeout=1.4)
        except (concurrent.futures.TimeoutError, Exception):
            pass
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=0.5)
        self._loop = None
        self._thread = None
        self.running = False
