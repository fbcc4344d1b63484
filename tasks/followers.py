"""The attempts this worker process follows after their actor thread returned (ADR 0015).

A ComfyUI attempt is submitted in the ``run_task`` actor, then handed to the executor's session
and to this registry; the actor thread is free. From here on:

- a small finisher pool (``spawn``) reads the outcome, stores the outputs and finishes the task;
- one monitor thread per process writes coalesced progress (at most one write per attempt per
  ``PROGRESS_EVERY`` seconds, and only when the percent rose), enforces run deadlines in memory,
  and every ``HEARTBEAT_EVERY`` seconds touches the heartbeat of every followed attempt in one
  ``UPDATE`` — after one ``SELECT`` that finds the attempts that are no longer current and
  running here (canceled, finished by a callback, retried, resumed by another worker): those
  are stopped.

Nothing here knows an executor protocol: ``tasks.execution`` passes the callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from integrations.executors.registry import sessions_close_all
from podi.runtime import current_worker_id, on_worker_shutdown
from tasks.models import Task, TaskStatus
from tasks.services import task_progress

logger = logging.getLogger("podi.tasks.followers")

HEARTBEAT_EVERY = 5.0
PROGRESS_EVERY = 0.5


@dataclass(eq=False)
class Followed:
    task_id: str
    attempt: int
    deadline: datetime
    # Called once, in a finisher thread, when the attempt must stop without an outcome:
    # "timeout", or the status it has now ("canceled", "succeeded", …, "superseded").
    on_stop: Callable[[str], None]
    written: int = -1  # the last progress written
    pending: tuple[int, dict | None] | None = None
    last_write: float = 0.0
    ended: bool = False
    started: float = field(default_factory=time.monotonic)


_followed: dict[tuple[str, int], Followed] = {}
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_monitor: threading.Thread | None = None
_stopping = threading.Event()


def following(task_id: str, attempt: int) -> bool:
    with _lock:
        return (task_id, attempt) in _followed


def followed_count() -> int:
    with _lock:
        return len(_followed)


def follow(entry: Followed) -> None:
    global _monitor
    with _lock:
        _followed[(entry.task_id, entry.attempt)] = entry
        if _monitor is None or not _monitor.is_alive():
            _stopping.clear()
            _monitor = threading.Thread(target=_monitor_loop, name="podi-followers", daemon=True)
            _monitor.start()


def unfollow(entry: Followed) -> None:
    with _lock:
        if _followed.get((entry.task_id, entry.attempt)) is entry:
            del _followed[(entry.task_id, entry.attempt)]


def claim_end(entry: Followed) -> bool:
    """True exactly once per entry: the caller concludes the attempt."""
    with _lock:
        if entry.ended:
            return False
        entry.ended = True
        return True


def report_progress(entry: Followed, percent: float, detail: dict | None = None) -> None:
    """Remember the latest percent (no database write here: the monitor writes it)."""
    value = int(max(0, min(99, percent)))
    current = entry.pending[0] if entry.pending else entry.written
    if value > current:
        entry.pending = (value, detail)


def _in_pool(fn: Callable[..., Any], *args: Any) -> None:
    # Nothing here may end a job unseen: the pool's futures are never read, so an exception
    # that escaped this function would lose the job (a prompt's end, say) without a word.
    _tidy_connections()
    try:
        fn(*args)
    except Exception:
        logger.exception("a finisher job failed: %s", getattr(fn, "__qualname__", fn))
    finally:
        _tidy_connections()


def _tidy_connections() -> None:
    try:
        close_old_connections()
    except Exception:  # the database is out: the job's own calls meet that and retry
        logger.warning("closing this thread's old database connections failed", exc_info=True)


def spawn(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in this process's finisher pool (database connections handled)."""
    global _pool
    with _lock:
        if _stopping.is_set() and not _followed:
            logger.info("worker stopping: %s not run", getattr(fn, "__name__", fn))
            return
        if _pool is None:
            _pool = ThreadPoolExecutor(
                settings.FINISHER_THREADS, thread_name_prefix="podi-finisher"
            )
        pool = _pool
    pool.submit(_in_pool, fn, *args)


def _stop(entry: Followed, reason: str) -> None:
    if claim_end(entry):
        spawn(entry.on_stop, reason)


def _monitor_loop() -> None:
    next_beat = time.monotonic() + HEARTBEAT_EVERY
    while not _stopping.wait(PROGRESS_EVERY):
        try:
            with _lock:
                entries = [e for e in _followed.values() if not e.ended]
            if not entries:
                continue
            now = timezone.now()
            for entry in entries:
                if now > entry.deadline:
                    _stop(entry, "timeout")
            _write_progress(entries)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_EVERY
                _heartbeat([e for e in entries if not e.ended])
        except Exception:
            logger.exception("the followers' monitor pass failed")
        finally:
            close_old_connections()


def _write_progress(entries: list[Followed]) -> None:
    tick = time.monotonic()
    for entry in entries:
        pending = entry.pending
        if entry.ended or pending is None or tick - entry.last_write < PROGRESS_EVERY:
            continue
        entry.pending = None
        if pending[0] <= entry.written:
            continue
        entry.written, entry.last_write = pending[0], tick
        if not task_progress(
            task_id=entry.task_id, attempt=entry.attempt, progress=pending[0], detail=pending[1]
        ):
            _stop(entry, "superseded")


def _heartbeat(entries: list[Followed]) -> None:
    """One SELECT and one UPDATE for every attempt followed here."""
    if not entries:
        return
    by_id: dict[str, list[Followed]] = {}
    for entry in entries:
        by_id.setdefault(entry.task_id, []).append(entry)
    me = current_worker_id()
    rows = Task.objects.filter(public_id__in=list(by_id)).values_list(
        "public_id", "attempts", "status", "executor_state"
    )
    current = []
    for task_id, attempts, status, state in rows:
        holder = (state or {}).get("worker")
        for entry in by_id.pop(task_id):
            if attempts != entry.attempt:
                _stop(entry, "superseded")
            elif status != TaskStatus.RUNNING:
                _stop(entry, status)
            elif me and holder and holder != me:
                _stop(entry, "superseded")  # resumed by another worker
            else:
                current.append(task_id)
    for gone in by_id.values():  # the task row is gone
        for entry in gone:
            _stop(entry, "superseded")
    if current:
        Task.objects.filter(public_id__in=current, status=TaskStatus.RUNNING).update(
            heartbeat_at=timezone.now()
        )


def followers_shutdown() -> None:
    """Stop following (worker shutdown): finisher jobs under way complete; attempts still in
    flight are resumed by another worker once this one's lease lapses (ADR 0012)."""
    global _pool, _monitor
    _stopping.set()
    with _lock:
        pool, monitor = _pool, _monitor
        _pool, _monitor = None, None
        _followed.clear()
    if monitor is not None:
        monitor.join(timeout=5)
    if pool is not None:
        pool.shutdown(wait=True)
    sessions_close_all()


on_worker_shutdown(followers_shutdown)
