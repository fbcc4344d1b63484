"""``manage.py up``: the whole platform in one process.

Migrates, creates the first staff user if there is none, then serves HTTP + WebSocket with Daphne,
runs the Dramatiq worker and the periodic reconciler. SIGINT/SIGTERM stop everything cleanly.
Production runs the same pieces as separate processes (see README).
"""

from __future__ import annotations

import os
import secrets
import sys
import time

from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from podi.asgi import application
from podi.reconcile import ReconcilerThread
from podi.runtime import start_worker


def ensure_first_admin(stdout) -> None:
    User = get_user_model()
    if User.objects.filter(is_staff=True).exists():
        return
    username = settings.PODI_ADMIN_USERNAME
    password = settings.PODI_ADMIN_PASSWORD
    generated = not password
    if generated:
        password = secrets.token_urlsafe(15)
    user = User.objects.filter(username=username).first() or User(username=username)
    user.is_staff = True
    user.is_superuser = True
    user.is_active = True
    user.set_password(password)
    user.save()
    if generated:
        stdout.write(
            f"Created the first admin user {username!r} with password: {password}\n"
            "  (shown once; set PODI_ADMIN_PASSWORD to choose it)\n"
        )
    else:
        stdout.write(
            f"Created the first admin user {username!r} (password from PODI_ADMIN_PASSWORD)\n"
        )
    stdout.flush()


class Command(BaseCommand):
    help = "Migrate, create the first admin, and serve web + worker + reconciler in one process."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
        parser.add_argument("--no-worker", action="store_true", help="Do not run the worker here.")
        parser.add_argument(
            "--no-reconciler", action="store_true", help="Do not run the reconciler here."
        )
        parser.add_argument("--threads", type=int, default=settings.WORKER_THREADS)

    def handle(self, *args, host, port, no_worker, no_reconciler, threads, **options):

        if not 0 < port < 65536:
            raise CommandError("--port must be between 1 and 65535")
        self.stdout.write("Applying database migrations…\n")
        call_command("migrate", interactive=False, verbosity=0)
        ensure_first_admin(self.stdout)

        worker = None
        if not no_worker:
            worker = start_worker(threads)
            self.stdout.write(f"Worker running ({threads} threads)\n")
        reconciler = None
        if not no_reconciler:
            reconciler = ReconcilerThread(settings.RECONCILE_INTERVAL)
            reconciler.start()
            self.stdout.write(f"Reconciler running (every {settings.RECONCILE_INTERVAL} s)\n")

        base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

        def ready():
            self.stdout.write(
                f"PODI is up at {base}  (admin {base}/admin/  API docs {base}/api/docs/  "
                f"health {base}/health  WebSocket {base.replace('http', 'ws', 1)}/api/notify/v1/stream)\n"
            )
            self.stdout.flush()

        server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=True,
            application_close_timeout=3,
            websocket_handshake_timeout=5,
            ready_callable=ready,
            verbosity=0,
        )
        started = time.monotonic()
        try:
            server.run()
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
