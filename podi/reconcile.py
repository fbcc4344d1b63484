"""The periodic reconciler: one pass every RECONCILE_INTERVAL seconds, never two at once.

Apps register steps with ``@reconcile_step``; a pass runs each under one fleet-wide lease, so
running ``manage.py up`` or ``manage.py reconcile --loop`` on several machines is safe.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

from django.db import close_old_connections

from podi.services import lease_acquire, lease_release

logger = logging.getLogger("podi.reconcile")

LEASE_NAME = "reconciler"
_steps: list[tuple[str, Callable[[], object]]] = []
HOLDER = f"{socket.gethostname()[:32]}:{os.getpid()}"


def reconcile_step(func: Callable[[], object]) -> Callable[[], object]:
    name = f"{func.__module__}.{func.__name__}"
    if all(existing != name for existing, _ in _steps):
        _steps.append((name, func))
    return func


def registered_steps() -> list[str]:
    return [name for name, _ in _steps]


def run_pass(*, lease_ttl: float = 60.0) -> dict[str, object] | None:
    """Run every step once. Returns step results, or None when another process holds the lease."""
    holder = f"{HOLDER}:{uuid.uuid4().hex[:8]}"[:64]  # one per pass, even within a process
    if not lease_acquire(name=LEASE_NAME, holder=holder, ttl=lease_ttl):
        return None
    results: dict[str, object] = {}
    try:
        for name, step in list(_steps):
            try:
                results[name] = step()
            except Exception as exc:  # one failing step must not stop the others
                logger.exception("reconcile step %s failed", name)
                results[name] = f"error: {exc}"
    finally:
        lease_release(name=LEASE_NAME, holder=holder)
        close_old_connections()
    return results


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
