"""``manage.py up``: the platform, or one role of it.

``--role all`` (the default) migrates, creates the first staff user if there is none, then serves
HTTP + WebSocket with Daphne, runs the Dramatiq worker and the periodic reconciler.
``--role web|worker|reconciler`` runs one of those pieces only (one systemd unit each, see
deploy/); those do not migrate unless ``--migrate`` is given (``deploy/podi-setup.service`` does
it once per release). SIGINT/SIGTERM stop everything cleanly.

With ``WEB_CONCURRENCY`` (``--web-processes``) above 1 — it needs Redis, and is the number of
cores by default when Redis is configured — this process binds the listening socket once and
supervises child processes: that many Daphne processes serving the one inherited socket (the
kernel hands each connection to one of them), plus, for ``--role all``, one worker and one
reconciler process. It relays their progress lines, and stops them all together: on SIGINT/SIGTERM,
or as soon as one of them exits (docs/adr/0014-platform-plumbing.md).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from podi.asgi import application
from podi.management.commands.ensure_admin import ensure_first_admin
from podi.reconcile import ReconcilerThread, registered_steps
from podi.runtime import import_actor_modules, start_worker
from podi.settings import base_url_for

ROLES = ("all", "web", "worker", "reconciler")
MANAGE_PY = settings.BASE_DIR / "manage.py"
SUPERVISOR_PID_ENV = "PODI_UP_SUPERVISOR_PID"
WEB_READY = "PODI web process ready"
CHILD_STOP_TIMEOUT = 10.0


def follow_listen_address(host: str, port: int) -> None:
    """Signed URLs and executor callbacks point where this server listens, unless
    PUBLIC_BASE_URL (or OSS_CALLBACK_URL) was set explicitly."""
    if settings.PUBLIC_BASE_URL_IS_SET:
        return
    settings.PUBLIC_BASE_URL = base_url_for(host, port)
    if not settings.OSS_CALLBACK_URL_IS_SET:
        settings.OSS_CALLBACK_URL = f"{settings.PUBLIC_BASE_URL}/api/media/v1/oss-callback"


class Command(BaseCommand):
    help = "Serve web + worker + reconciler in one process, or one --role of them."

    def add_arguments(self, parser):
        parser.add_argument("--role", choices=ROLES, default=os.environ.get("PODI_ROLE") or "all")
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument(
            "--migrate",
            action="store_true",
            help="Migrate and create the first admin first (always done with --role all).",
        )
        parser.add_argument("--no-worker", action="store_true", help="Do not run the worker here.")
        parser.add_argument(
            "--no-reconciler", action="store_true", help="Do not run the reconciler here."
        )
        parser.add_argument("--threads", type=int, default=settings.WORKER_THREADS)
        parser.add_argument(
            "--web-processes",
            type=int,
            default=settings.WEB_CONCURRENCY,
            help="Daphne processes sharing the listening socket (WEB_CONCURRENCY; >1 needs Redis).",
        )
        parser.add_argument(
            "--fd",
            type=int,
            default=None,
            help="Serve on this inherited listening socket (set by up for its web processes).",
        )
        parser.add_argument(
            "--proxy-headers",
            action="store_true",
            default=settings.PROXY_HEADERS,
            help="Take the client address and scheme from X-Forwarded-For/-Proto (behind nginx).",
        )

    def handle(self, *args, role, host, port, migrate, threads, **opts):

        if not 0 < port < 65536:
            raise CommandError("--port must be between 1 and 65535")
        supervisor_pid = os.environ.pop(SUPERVISOR_PID_ENV, None)
        if supervisor_pid:
            stop_when_orphaned(int(supervisor_pid))
        follow_listen_address(host, port)
        run_web = role in ("all", "web")
        run_worker = role == "worker" or (role == "all" and not opts["no_worker"])
        run_reconciler = role == "reconciler" or (role == "all" and not opts["no_reconciler"])
        if role == "all" or migrate:
            self.stdout.write("Applying database migrations…\n")
            call_command("migrate", interactive=False, verbosity=0)
            ensure_first_admin(self.stdout)
        web_processes = opts["web_processes"]
        if run_web and opts["fd"] is None and web_processes > 1:
            if not settings.REDIS_URL:
                raise CommandError("--web-processes > 1 needs REDIS_URL (see WEB_CONCURRENCY)")
            if ":" in host:  # Daphne adopts an inherited socket as IPv4 only
                raise CommandError(
                    "--web-processes > 1 listens on an IPv4 address; set HOST to one (or "
                    "WEB_CONCURRENCY=1 for an IPv6 address)"
                )
            close_database_connections()  # the supervisor keeps none open
            code = Supervisor(self, host=host, port=port, threads=threads, opts=opts).run(
                web_processes,
                worker=run_worker,
                reconciler=run_reconciler,
            )
            # Everything is stopped: leave without the interpreter's slow teardown (as children do).
            self.stdout.flush()
            logging.shutdown()
            sys.stderr.flush()
            os._exit(code)

        worker = None
        if run_worker:
            worker = start_worker(threads)
            self.stdout.write(f"Worker running ({threads} threads)\n")
        reconciler = None
        if run_reconciler:
            import_actor_modules()  # every app's reconcile steps are declared in its actors
            reconciler = ReconcilerThread(settings.RECONCILE_INTERVAL)
            reconciler.start()
            self.stdout.write(f"Reconciler running (every {settings.RECONCILE_INTERVAL} s)\n")
            self.stdout.write(f"Reconciler steps: {', '.join(registered_steps())}\n")
        self.stdout.flush()

        started = time.monotonic()
        try:
            if run_web:
                self._serve(host, port, proxy_headers=opts["proxy_headers"], fd=opts["fd"])
            else:
                self._wait_for_signal(role)
        finally:
            self.stdout.write("Stopping…\n")
            self.stdout.flush()
            if reconciler is not None:
                reconciler.stop()
            if worker is not None:
                worker.stop(timeout=4000)
            if reconciler is not None:
                reconciler.join(timeout=2)
            close_database_connections()  # and the pool, whose threads would delay the exit
            self.stdout.write(f"Stopped after {time.monotonic() - started:.0f} s of service.\n")
            self.stdout.flush()
            sys.stdout.flush()
        if supervisor_pid:
            # A supervised child has stopped everything it ran and closed its pool: leave now,
            # without the interpreter's teardown, which takes seconds on a loaded machine.
            logging.shutdown()
            sys.stderr.flush()
            os._exit(0)

    def _wait_for_signal(self, role: str) -> None:
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        self.stdout.write(f"PODI {role} is up (pid {os.getpid()})\n")
        self.stdout.flush()
        while not stopping.wait(1.0):
            pass

    def _serve(self, host: str, port: int, *, proxy_headers: bool, fd: int | None) -> None:

        def ready():
            if fd is None:
                self.stdout.write(up_line(host, port))
            else:  # one of several: the supervisor says "PODI is up" once all are ready
                self.stdout.write(f"{WEB_READY} (pid {os.getpid()})\n")
            self.stdout.flush()

        if fd is None:
            endpoints = build_endpoint_description_strings(host=host, port=port)
        else:
            endpoints = build_endpoint_description_strings(file_descriptor=fd)
        Server(
            application=application,
            endpoints=endpoints,
            signal_handlers=True,
            application_close_timeout=3,
            websocket_handshake_timeout=5,
            ready_callable=ready,
            verbosity=0,
            proxy_forwarded_address_header="X-Forwarded-For" if proxy_headers else None,
            proxy_forwarded_port_header="X-Forwarded-Port" if proxy_headers else None,
            proxy_forwarded_proto_header="X-Forwarded-Proto" if proxy_headers else None,
        ).run()


def stop_when_orphaned(supervisor_pid: int) -> None:
    """A supervised child stops (SIGTERM to itself) once its supervisor is gone, even killed."""

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="podi-up-orphan-watch", daemon=True).start()


def up_line(host: str, port: int) -> str:
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    return (
        f"PODI is up at {base}  (admin {base}/admin/  API docs {base}/api/docs/  "
        f"health {base}/health  WebSocket {base.replace('http', 'ws', 1)}/api/notify/v1/stream)\n"
    )


def close_database_connections() -> None:
    """Close this process's connections, and its pool on PostgreSQL (the supervisor's children
    open their own)."""
    for conn in connections.all(initialized_only=True):
        conn.close()
        if getattr(conn, "pool", None) is not None:
            conn.close_pool()


@dataclass
class Child:
    name: str
    args: list[str]
    ready_marker: str
    process: subprocess.Popen | None = None
    ready: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    """Binds the socket, starts the children, relays their stdout, stops them all together."""

    def __init__(self, command: Command, *, host: str, port: int, threads: int, opts: dict):
        self.command = command
        self.host, self.port, self.threads, self.opts = host, port, threads, opts
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.children: list[Child] = []

    def say(self, text: str) -> None:
        with self.lock:
            self.command.stdout.write(text if text.endswith("\n") else f"{text}\n")
            self.command.stdout.flush()

    def listen(self) -> socket.socket:
        try:
            sock = socket.create_server((self.host, self.port), backlog=1024)
        except OSError as exc:
            raise CommandError(f"cannot listen on {self.host}:{self.port}: {exc}") from None
        sock.set_inheritable(True)
        return sock

    def plan(self, web_processes: int, fd: int, *, worker: bool, reconciler: bool) -> list[Child]:
        common = ["--host", self.host, "--port", str(self.port)]
        children = [
            Child(
                f"web {index}",
                ["--role", "web", *common, "--fd", str(fd)]
                + (["--proxy-headers"] if self.opts["proxy_headers"] else []),
                WEB_READY,
            )
            for index in range(1, web_processes + 1)
        ]
        if worker:
            children.append(
                Child(
                    "worker",
                    ["--role", "worker", *common, "--threads", str(self.threads)],
                    "PODI worker is up",
                )
            )
        if reconciler:
            children.append(
                Child("reconciler", ["--role", "reconciler", *common], "PODI reconciler is up")
            )
        return children

    def relay(self, child: Child) -> None:
        for line in child.process.stdout:
            self.say(f"[{child.name}] {line.rstrip()}")
            if child.ready_marker in line:
                child.ready.set()

    def run(self, web_processes: int, *, worker: bool, reconciler: bool) -> int:
        sock = self.listen()
        started = time.monotonic()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stopping.set())
        self.children = self.plan(
            web_processes, sock.fileno(), worker=worker, reconciler=reconciler
        )
        self.say(
            f"Starting {web_processes} web processes on {self.host}:{self.port}"
            + (", a worker" if worker else "")
            + (", a reconciler" if reconciler else "")
            + f" (supervisor pid {os.getpid()})"
        )
        failed = 0
        try:
            for child in self.children:
                child.process = subprocess.Popen(  # noqa: S603 - our own manage.py, fixed args
                    [sys.executable, str(MANAGE_PY), "up", *child.args],
                    stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    bufsize=1,
                    pass_fds=(sock.fileno(),) if "--fd" in child.args else (),
                    env={
                        **os.environ,
                        "PYTHONUNBUFFERED": "1",
                        SUPERVISOR_PID_ENV: str(os.getpid()),
                    },
                )
                self.say(f"Started {child.name} (pid {child.process.pid})")
                threading.Thread(
                    target=self.relay, args=(child,), name=f"podi-up-{child.name}", daemon=True
                ).start()
            failed = self.watch()
        finally:
            self.stop()
            sock.close()
        self.say(f"Stopped after {time.monotonic() - started:.0f} s of service.")
        return failed

    def watch(self) -> int:
        """Until a signal or a child's exit: print "PODI is up" once every child is ready."""
        announced = False
        while not self.stopping.wait(0.2):
            for child in self.children:
                code = child.process.poll()
                if code is not None:
                    self.say(
                        f"{child.name} (pid {child.process.pid}) exited with {code}; stopping all"
                    )
                    return code or 1
            if not announced and all(child.ready.is_set() for child in self.children):
                announced = True
                self.say(
                    up_line(self.host, self.port).rstrip() + f"  [{len(self.children)} processes]"
                )
        return 0

    def stop(self) -> None:
        self.say("Stopping…")
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} (pid {child.process.pid}) did not stop; killing it")
                child.process.kill()
                child.process.wait()
