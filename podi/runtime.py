"""Runs the Dramatiq worker inside this process (embedded mode and ``manage.py up``), and keeps
every worker process's liveness lease."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import os
import socket
import threading
import uuid

import dramatiq
from django.apps import apps
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.urls import get_resolver
from psycopg_pool import PoolTimeout

logger = logging.getLogger("podi.runtime")


def import_actor_modules() -> list[str]:
    """Import ``<app>.actors`` for every installed app that has one, so actors are declared."""
    loaded = []
    for config in apps.get_app_configs():
        module = f"{config.name}.actors"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
            loaded.append(module)
    return loaded


def freeze_startup_heap() -> int:
    """Load the URLconf (and so every view), then move everything alive to the collector's
    permanent generation (``gc.freeze``): startup objects are never garbage, and a full
    collection no longer walks them. With a thousand sockets open a web process's full
    collection took 100–250 ms, every socket's events waiting behind it (README, "Fan-out
    benchmark"). Returns how many objects were frozen."""
    get_resolver().url_patterns  # noqa: B018 - imports every view module
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def start_worker(threads: int) -> dramatiq.Worker:
    import_actor_modules()
    worker = dramatiq.Worker(dramatiq.get_broker(), worker_threads=threads, worker_timeout=200)
    worker.start()
    return worker


# --- Worker liveness --------------------------------------------------------------------------
# Each worker process holds a lease named ``worker:<id>`` and renews it every third of
# WORKER_LEASE_TTL from a thread of its own, whatever its actors are doing. A task attempt records
# the id of the worker running it, so the reconciler can tell a dead worker's tasks (lease
# expired: resume them elsewhere now) from a busy one's (docs/adr/0012-fleet.md).

WORKER_LEASE_PREFIX = "worker:"
_worker_id: str | None = None
# Called (in order) when a worker process shuts down, before its lease thread stops: the tasks
# app closes its executor sessions here (docs/adr/0015-executor-sessions.md).
_shutdown_hooks: list = []


def on_worker_shutdown(hook) -> None:
    """Register ``hook()`` to run when this process's Dramatiq worker stops (once per hook)."""
    if hook not in _shutdown_hooks:
        _shutdown_hooks.append(hook)


def current_worker_id() -> str | None:
    """This process's worker id while it runs a Dramatiq worker, else None."""
    return _worker_id


def worker_lease_name(worker_id: str) -> str:
    return f"{WORKER_LEASE_PREFIX}{worker_id}"


class WorkerLiveness(dramatiq.Middleware):
    """Dramatiq middleware: keeps this worker process's liveness lease while the worker runs."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker) -> None:
        global _worker_id
        _worker_id = f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stopping.clear()
        self._renew()
        self._thread = threading.Thread(target=self._run, name="podi-worker-lease", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker) -> None:
        global _worker_id
        for hook in list(_shutdown_hooks):
            try:
                hook()
            except Exception:  # one failing hook must not keep the others from running
                logger.exception("worker shutdown hook %s failed", hook)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        _worker_id = None

    def _run(self) -> None:

        while not self._stopping.wait(settings.WORKER_LEASE_TTL / 3):
            self._renew()

    def _renew(self) -> None:
        # This module is Dramatiq middleware, loaded while Django builds its app registry (before
        # models can be imported): the service is imported at call time, as Django requires.
        from podi.services import lease_acquire  # noqa: PLC0415

        try:
            lease_acquire(
                name=worker_lease_name(_worker_id),
                holder=_worker_id,
                ttl=settings.WORKER_LEASE_TTL,
            )
        except Exception:  # the database is down: renew at the next tick; the lease may lapse
            logger.warning("renewing the worker lease failed", exc_info=True)
        finally:
            connection.close()


# --- Database busy or down ---------------------------------------------------------------------
# An actor that fails because the database had no connection for it (the pool stayed empty past
# DATABASE_POOL_TIMEOUT, PostgreSQL at max_connections, or restarting) did nothing wrong, and its
# message must not be lost: once the Retries middleware has given up on it, it is enqueued again
# after a growing delay, a few times. Whatever is still undone after that, the reconciler finds
# in the database (queued tasks are dispatched, stale runs resumed), as after any worker crash.

DB_RETRY_OPTION = "podi_db_retries"
DB_RETRY_LIMIT = 5
DB_RETRY_MAX_DELAY_MS = 30_000


def database_unavailable(exc: BaseException | None) -> bool:
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)


class DatabaseBusyRetry(dramatiq.Middleware):
    """Dramatiq middleware: re-enqueue (with a delay) a message that failed for want of a
    database connection. Listed before ``Retries`` (Dramatiq runs after_* hooks in reverse), so
    it acts only on a message that Retries has failed."""

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        if not message.failed or not database_unavailable(exception):
            return
        done = int(message.options.get(DB_RETRY_OPTION, 0))
        if done >= DB_RETRY_LIMIT:
            logger.warning(
                "%s: database still unavailable after %d retries; the reconciler takes over",
                message.actor_name,
                done,
            )
            return
        delay = min(DB_RETRY_MAX_DELAY_MS, 1000 * 2**done)
        logger.warning(
            "%s: database unavailable (%s); retrying in %d ms", message.actor_name, exception, delay
        )
        retry = message.copy(options={DB_RETRY_OPTION: done + 1, "retries": 0})
        try:
            broker.enqueue(retry, delay=delay)
        except Exception:  # the broker is down too: the reconciler covers it
            logger.warning("re-enqueueing %s failed", message.actor_name, exc_info=True)
