"""The periodic reconciler: one pass every RECONCILE_INTERVAL seconds, never two at once.

Apps register steps with ``@reconcile_step``; a pass runs each under one fleet-wide lease, so
running ``manage.py up`` or ``manage.py reconcile --loop`` on several machines is safe. The lease
is renewed every third of its lifetime while a pass runs; a pass that loses it (a stall longer
than the lease, a clock jump) runs no further step.

The lease lives ``RECONCILE_LEASE_TTL`` seconds: a reconciler killed mid-pass (``kill -9``, a host
lost) blocks the others for at most that long. A release the database refused (it was down) is
retried before the next pass, so an outage does not hold the lease until it expires. Every pass
logs ``reconcile pass started`` and ``reconcile pass ended`` (INFO, with its ``holder`` and
``startedAt``/``endedAt`` in epoch seconds): an operator (and tests/fleet/) can see that no two
passes overlapped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from podi.services import lease_acquire, lease_release, lease_renew

logger = logging.getLogger("podi.reconcile")

LEASE_NAME = "reconciler"
_steps: list[tuple[str, Callable[[], object]]] = []
HOLDER = f"{socket.gethostname()[:32]}:{os.getpid()}"
# Holders of passes whose release failed (the database was down); released before the next pass.
_unreleased: list[str] = []
_unreleased_lock = threading.Lock()


def reconcile_step(func: Callable[[], object]) -> Callable[[], object]:
    name = f"{func.__module__}.{func.__name__}"
    if all(existing != name for existing, _ in _steps):
        _steps.append((name, func))
    return func


def registered_steps() -> list[str]:
    return [name for name, _ in _steps]


class LeaseKeeper(threading.Thread):
    """Renews a held lease every ``ttl / 3`` seconds; sets ``lost`` once it cannot be renewed."""

    def __init__(self, *, name: str, holder: str, ttl: float):
        super().__init__(name=f"podi-lease-{name}", daemon=True)
        self.lease, self.holder, self.ttl = name, holder, ttl
        self.interval = max(ttl / 3, 0.05)
        self.lost = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        renewed_at = time.monotonic()
        try:
            while not self.stopping.wait(self.interval):
                try:
                    if lease_renew(name=self.lease, holder=self.holder, ttl=self.ttl):
                        renewed_at = time.monotonic()
                        continue
                    logger.warning("lease %s was taken from %s", self.lease, self.holder)
                except DatabaseError:
                    logger.exception("renewing lease %s failed", self.lease)
                    if time.monotonic() - renewed_at < self.ttl - self.interval:
                        continue  # still ours for a while: try again
                self.lost.set()
                return
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=max(self.ttl, 5))


def _release(holder: str) -> None:
    try:
        lease_release(name=LEASE_NAME, holder=holder)
    except DatabaseError:
        logger.warning("releasing lease %s of %s failed; retried next pass", LEASE_NAME, holder)
        with _unreleased_lock:
            _unreleased.append(holder)


def _release_leftovers() -> None:
    with _unreleased_lock:
        holders = list(_unreleased)
        _unreleased.clear()
    for holder in holders:
        _release(holder)


def run_pass(*, lease_ttl: float | None = None) -> dict[str, object] | None:
    """Run every step once. Returns step results, or None when another process holds the lease.

    Steps left when the lease is lost are reported as ``"skipped: lease lost"`` and not run.
    """
    lease_ttl = lease_ttl or settings.RECONCILE_LEASE_TTL
    _release_leftovers()
    holder = f"{HOLDER}:{uuid.uuid4().hex[:8]}"[:64]  # one per pass, even within a process
    if not lease_acquire(name=LEASE_NAME, holder=holder, ttl=lease_ttl):
        return None
    started = time.time()
    _log_pass("reconcile pass started", holder=holder, startedAt=started)
    keeper = LeaseKeeper(name=LEASE_NAME, holder=holder, ttl=lease_ttl)
    keeper.start()
    results: dict[str, object] = {}
    try:
        for name, step in list(_steps):
            if keeper.lost.is_set():
                results[name] = "skipped: lease lost"
                continue
            try:
                results[name] = step()
            except Exception as exc:  # one failing step must not stop the others
                logger.exception("reconcile step %s failed", name)
                results[name] = f"error: {exc}"
    finally:
        keeper.stop()
        # Logged before the release: the interval it shows is inside the time the lease was held.
        _log_pass(
            "reconcile pass ended",
            holder=holder,
            startedAt=started,
            endedAt=time.time(),
            leaseLost=keeper.lost.is_set(),
        )
        _release(holder)
        close_old_connections()
    return results


def _log_pass(message: str, **extra: object) -> None:
    """A pass's start and end: at INFO with ``RECONCILE_LOG_PASSES`` (the evidence that passes
    never overlap, docs/adr/0012-fleet.md), at DEBUG otherwise (two lines every few seconds)."""
    level = logging.INFO if settings.RECONCILE_LOG_PASSES else logging.DEBUG
    logger.log(level, message, extra=extra)


class ReconcilerThread(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(name="podi-reconciler", daemon=True)
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                run_pass()
            except Exception:
                logger.exception("reconcile pass failed")

    def stop(self) -> None:
        self.stopping.set()
