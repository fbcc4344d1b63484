import time

from django.conf import settings
from django.core.management.base import BaseCommand

from podi.reconcile import registered_steps, run_pass
from podi.runtime import import_actor_modules


class Command(BaseCommand):
    help = "Run one reconciler pass (or --loop forever). Safe to run on several machines."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true")
        parser.add_argument("--interval", type=float, default=settings.RECONCILE_INTERVAL)

    def handle(self, *args, loop, interval, **options):
        import_actor_modules()
        self.stdout.write(f"Steps: {', '.join(registered_steps()) or 'none'}\n")
        while True:
            started = time.monotonic()
            results = run_pass()
            elapsed = time.monotonic() - started
            if results is None:
                self.stdout.write("Another reconciler holds the lease; skipped.\n")
            else:
                summary = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in results.items())
                self.stdout.write(f"Pass done in {elapsed:.2f} s: {summary or 'nothing to do'}\n")
            if not loop:
                return
            time.sleep(max(0.0, interval - elapsed))
