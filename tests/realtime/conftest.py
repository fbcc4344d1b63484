"""Live-event test rig: a real ASGI server, real WebSocket clients, a loopback webhook receiver.

The server is the configuration under test:

* embedded (no ``REDIS_URL``): Daphne serving ``podi.asgi:application`` in a thread of this
  process, with the in-memory channel layer, exactly as ``manage.py up`` runs it; events raised
  by the tests are this process's events.
* production (``REDIS_URL`` set): Daphne as a separate process on the test database and the same
  Redis prefix; every event the tests raise crosses from this process (the "worker") to the web
  process through Redis.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import dramatiq
import httpx
import pytest
from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server as DaphneServer
from django.conf import settings
from django.db import connection, connections, transaction
from dramatiq.brokers.stub import StubBroker
from rest_framework_simplejwt.tokens import AccessToken
from websockets.asyncio.client import connect

from integrations.models import Ability
from podi.asgi import application
from podi.ids import new_id
from podi.realtime.events import Webhook, emit
from podi.realtime.webhooks import webhook_delivery_create
from podi.runtime import start_worker
from tasks.models import Task
from tasks.services import callback_body

ROOT = Path(__file__).resolve().parents[2]
CONTROL_TYPES = {"hello", "pong", "heartbeat", "subscribed", "resumed", "error"}
PRODUCTION = bool(settings.REDIS_URL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


# --- Servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, token: str | None = None) -> str:
        base = f"ws://127.0.0.1:{self.port}/api/notify/v1/stream"
        return f"{base}?token={quote(token)}" if token else base


_threaded: Server | None = None


def _threaded_daphne() -> Server:
    """Daphne in a daemon thread (one per test session: a Twisted reactor cannot restart)."""
    global _threaded
    if _threaded is not None:
        return _threaded

    port = free_port()
    ready = threading.Event()
    server = DaphneServer(
        application=application,
        endpoints=build_endpoint_description_strings(host="127.0.0.1", port=port),
        signal_handlers=False,
        ready_callable=ready.set,
        verbosity=0,
        application_close_timeout=3,
        websocket_handshake_timeout=5,
    )
    threading.Thread(target=server.run, name="test-daphne", daemon=True).start()
    assert ready.wait(30), "daphne did not start"
    wait_for_port(port)
    _threaded = Server(port)
    return _threaded


def database_url_for_subprocess() -> str:
    """``DATABASE_URL`` pointing at the test database pytest-django created."""
    name = str(connection.settings_dict["NAME"])
    if connection.vendor == "sqlite":
        return "sqlite:///" + name
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + name))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a PODI process that shares this test run's database, Redis and keys."""
    env = {
        **os.environ,
        "SECRET_KEY": settings.SECRET_KEY,
        "JWT_SIGNING_KEY": settings.SIMPLE_JWT["SIGNING_KEY"],
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "warning",
    }
    env["DATABASE_URL"] = database_url_for_subprocess()
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
        env["REDIS_PREFIX"] = settings.REDIS_PREFIX
    env.update(extra)
    return env


def start_daphne_process(log_path: Path, **extra_env: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
    with open(log_path, "w") as log:  # a file, not a pipe nobody reads (it would fill and block)
        process = subprocess.Popen(
            [*command, "podi.asgi:application"],
            cwd=ROOT,
            env=subprocess_env(**extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process=process)
    except Exception:
        process.kill()
        process.wait()
        raise RuntimeError(log_path.read_text()) from None
    return Server(port, process)


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def ws_server(django_db_setup, django_db_blocker, tmp_path_factory):
    if not PRODUCTION:
        yield _threaded_daphne()
        return
    server = start_daphne_process(tmp_path_factory.mktemp("daphne") / "web.log")
    yield server
    stop_process(server.process)


@pytest.fixture
def heartbeat_server(ws_server, settings, tmp_path):
    """A server whose sockets beat every second."""
    if not PRODUCTION:
        settings.NOTIFY_HEARTBEAT_INTERVAL = 1  # read by each consumer when it connects
        yield ws_server
        return
    server = start_daphne_process(tmp_path / "web.log", NOTIFY_HEARTBEAT_INTERVAL="1")
    yield server
    stop_process(server.process)


# --- Database from async code -----------------------------------------------------------------


async def db(fn: Callable, *args, **kwargs):
    """Run ORM code in a worker thread (never on the event loop), closing its connection."""

    def call():
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    return await asyncio.to_thread(call)


def emit_events(user_id: int, count: int, *, type: str = "task.progress", task_id=None, size=0):
    """``count`` events for ``user_id``, each committed in its own transaction."""
    events = []
    for index in range(count):
        payload = {"n": index}
        if task_id:
            payload["taskId"] = task_id
        if size:
            payload["blob"] = "x" * size
        with transaction.atomic():
            events.append(emit(user_id=user_id, type=type, payload=payload, task_id=task_id))
    return events


def make_task(user, *, service_key=None, callback_url: str = "", **fields):
    ability, _ = Ability.objects.get_or_create(code="upscale", defaults={"display_name": "Upscale"})
    return Task.objects.create(
        public_id=new_id("tsk"),
        user=user,
        ability=ability,
        action=ability.code,
        service_key=service_key,
        callback_url=callback_url,
        **fields,
    )


def record_callback(task, event_name: str = "task.succeeded"):
    """The task's callback for ``event_name`` recorded as a delivery (not sent), as
    ``emit(…, webhook=…)`` records it in the task's transaction."""

    webhook = Webhook(
        url=task.callback_url,
        event_type=event_name,
        body=callback_body(task=task, event_name=event_name),
        service_key_id=task.service_key_id,
    )
    return webhook_delivery_create(webhook=webhook, user_id=task.user_id, task_id=task.public_id)


# --- WebSocket clients ------------------------------------------------------------------------


async def open_stream(server: Server, token: str | None, *, subprotocols=None, **kwargs):
    url = server.url(None if subprotocols else token)
    return await connect(url, subprotocols=subprotocols, open_timeout=20, **kwargs)


async def receive(ws, *, timeout: float = 10.0, skip=("heartbeat",)) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no message")
        message = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        if message.get("type") not in skip:
            return message


async def receive_events(ws, count: int, *, timeout: float = 15.0) -> list[dict]:
    """The next ``count`` event messages (control messages are skipped)."""
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"got {len(events)} of {count} events: {events[-3:]}")
        message = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        if message.get("type") not in CONTROL_TYPES:
            events.append(message)
    return events


async def assert_silent(ws, seconds: float) -> None:
    """Nothing but heartbeats arrives for ``seconds``."""
    try:
        message = await receive(ws, timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message: {message}")


def raw_handshake(server: Server, token: str, *, rcvbuf: int = 4096) -> socket.socket:
    """A socket that completes the WebSocket handshake and then never reads (a stalled client)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /api/notify/v1/stream?token={quote(token)} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed during handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


# --- Webhook receiver -------------------------------------------------------------------------


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 answering with ``statuses`` in turn (the last one repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    delay: float = 0.0  # seconds to wait before answering

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/podi?src=test"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.requests)


@pytest.fixture
def receiver():
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            index = len(state.requests)
            state.requests.append(Received(time.monotonic(), dict(self.headers.items()), body))
            status = state.statuses[min(index, len(state.statuses) - 1)]
            if state.delay:
                time.sleep(state.delay)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok" if status < 300 else b"nope")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def worker():
    """A Dramatiq worker on the configured broker (stub embedded, Redis in production)."""

    broker = dramatiq.get_broker()
    broker.flush_all()
    running = start_worker(threads=2)
    yield running
    running.stop(timeout=5000)
    broker.flush_all()
    connections.close_all()


@pytest.fixture
def broker_messages():
    """Messages waiting on the broker (no worker running): ``broker_messages()`` → actor names."""

    broker = dramatiq.get_broker()
    broker.flush_all()

    def pending() -> list[tuple[str, tuple]]:
        names = []
        if isinstance(broker, StubBroker):
            for queue in broker.queues.values():
                names.extend((m.actor_name, tuple(m.args)) for m in _stub_messages(queue))
        else:  # RedisBroker
            client = broker.client
            for key in client.keys(f"{broker.namespace}:*"):
                if client.type(key) != b"list":
                    continue
                for message_id in client.lrange(key, 0, -1):
                    raw = client.hget(f"{key.decode()}.msgs", message_id)
                    if raw:
                        data = json.loads(raw)
                        names.append((data["actor_name"], tuple(data["args"])))
        return names

    yield pending
    broker.flush_all()


def _stub_messages(queue):
    return [dramatiq.Message.decode(item) for item in list(queue.queue)]


def jwt(user) -> str:
    """A user access token, made without touching the database (usable inside async code)."""

    return str(AccessToken.for_user(user))


def login_http(server: Server, username: str, password: str) -> str:
    response = httpx.post(
        f"{server.http}/api/auth/v1/login",
        json={"username": username, "password": password},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["accessToken"]
