"""``manage.py up``: the platform, or one role of it, in one process.

``--role all`` (the default) migrates, creates the first staff user if there is none, then serves
HTTP + WebSocket with Daphne, runs the Dramatiq worker and the periodic reconciler.
``--role web|worker|reconciler`` runs one of those pieces only (one systemd unit each, see
deploy/); those do not migrate unless ``--migrate`` is given (``deploy/podi-setup.service`` does
it once per release). SIGINT/SIGTERM stop everything cleanly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from podi.asgi import application
from podi.management.commands.ensure_admin import ensure_first_admin
from podi.reconcile import ReconcilerThread, registered_steps
from podi.runtime import import_actor_modules, start_worker
from podi.settings import base_url_for

ROLES = ("all", "web", "worker", "reconciler")


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
            "--proxy-headers",
            action="store_true",
            default=settings.PROXY_HEADERS,
            help="Take the client address and scheme from X-Forwarded-For/-Proto (behind nginx).",
        )

    def handle(self, *args, role, host, port, migrate, threads, **opts):

        if not 0 < port < 65536:
            raise CommandError("--port must be between 1 and 65535")
        follow_listen_address(host, port)
        run_web = role in ("all", "web")
        run_worker = role == "worker" or (role == "all" and not opts["no_worker"])
        run_reconciler = role == "reconciler" or (role == "all" and not opts["no_reconciler"])
        if role == "all" or migrate:
            self.stdout.write("Applying database migrations…\n")
            call_command("migrate", interactive=False, verbosity=0)
            ensure_first_admin(self.stdout)

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
                self._serve(host, port, proxy_headers=opts["proxy_headers"])
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
            self.stdout.write(f"Stopped after {time.monotonic() - started:.0f} s of service.\n")
            self.stdout.flush()
            sys.stdout.flush()

    def _wait_for_signal(self, role: str) -> None:
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        self.stdout.write(f"PODI {role} is up (pid {os.getpid()})\n")
        self.stdout.flush()
        while not stopping.wait(1.0):
            pass

    def _serve(self, host: str, port: int, *, proxy_headers: bool) -> None:

        base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

        def ready():
            self.stdout.write(
                f"PODI is up at {base}  (admin {base}/admin/  API docs {base}/api/docs/  "
                f"health {base}/health  WebSocket {base.replace('http', 'ws', 1)}/api/notify/v1/stream)\n"
            )
            self.stdout.flush()

        Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=True,
            application_close_timeout=3,
            websocket_handshake_timeout=5,
            ready_callable=ready,
            verbosity=0,
            proxy_forwarded_address_header="X-Forwarded-For" if proxy_headers else None,
            proxy_forwarded_port_header="X-Forwarded-Port" if proxy_headers else None,
            proxy_forwarded_proto_header="X-Forwarded-Proto" if proxy_headers else None,
        ).run()
