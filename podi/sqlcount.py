"""Opt-in SQL statement counter for the benches (``PODI_SQL_COUNT_DIR``; off by default).

When ``PODI_SQL_COUNT_DIR`` is set, every database connection of this process gets an execute
wrapper (Django's ``connection.execute_wrappers``) that counts the statements Django sends, by
where they came from and by their first keyword:

* ``http:<METHOD> <path>`` — inside an HTTP request (set by :class:`SqlCountMiddleware`, first in
  ``MIDDLEWARE``; ids in the path become ``{id}``), e.g. ``http:POST /api/tasks/v1/submit``;
* ``thread:<name>`` — anything else, by thread name with digits folded (Dramatiq worker threads
  are ``Thread-N``; ``podi-reconciler``, ``podi-worker-lease``, the WebSocket consumers' database
  threads ``ThreadPoolExecutor-N_N``…).

A daemon thread writes the totals to ``<dir>/sql-<pid>.json`` (atomically) whenever they changed,
at most every 0.2 s, and once more at exit; ``bench/peer.py`` reads them before and after a phase.
What is counted: every ``cursor.execute``/``executemany`` call (savepoints included, an
``executemany`` counts once); what is not: the driver's implicit ``BEGIN`` and
``connection.commit()``/``rollback()`` (transactions — the bench reads those from
``pg_stat_database`` on PostgreSQL).
"""

from __future__ import annotations

import atexit
import contextvars
import json
import os
import re
import sys
import threading
from collections import Counter
from pathlib import Path

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db.backends.signals import connection_created

_label: contextvars.ContextVar[str | None] = contextvars.ContextVar("podi_sql_label", default=None)
_counts: Counter[tuple[str, str]] = Counter()
_lock = threading.Lock()
_dirty = threading.Event()
_state: dict = {"dir": None}
_DIGITS = re.compile(r"\d+")
# ids (tsk_…, 42) and long tokens (signed download URLs) in a path become {id}
_ID_SEGMENT = re.compile(r"/(?:[a-z]{2,8}_[A-Za-z0-9_-]{6,}|\d+|[^/]{25,})(?=/|$)")
_VERB = re.compile(r"\s*([A-Za-z]+)")


def _where() -> str:
    label = _label.get()
    if label is not None:
        return label
    return "thread:" + _DIGITS.sub("N", threading.current_thread().name)


def _count(execute, sql, params, many, context):
    match = _VERB.match(sql) if isinstance(sql, str) else None
    key = (_where(), match.group(1).upper() if match else "?")
    with _lock:
        _counts[key] += 1
    _dirty.set()
    return execute(sql, params, many, context)


def _on_connection(sender, connection, **kwargs):  # noqa: ARG001
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


def snapshot() -> dict:
    """``{label: {verb: n, ..., "total": n}}`` of this process so far."""
    with _lock:
        items = list(_counts.items())
    out: dict[str, dict[str, int]] = {}
    for (label, verb), n in items:
        entry = out.setdefault(label, {"total": 0})
        entry[verb] = entry.get(verb, 0) + n
        entry["total"] += n
    return out


def _write() -> None:
    directory = _state["dir"]
    _dirty.clear()
    body = {"pid": os.getpid(), "argv": sys.argv[:4], "counts": snapshot()}
    path = Path(directory) / f"sql-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(body))
        tmp.replace(path)
    except OSError:  # the bench removed its directory: nothing to report to
        pass


def _writer() -> None:
    while True:
        _dirty.wait()
        _write()
        threading.Event().wait(0.2)


def install(directory: str) -> None:
    """Count from now on (called once per process by ``PodiConfig.ready``)."""
    if _state["dir"] is not None:
        return
    _state["dir"] = directory
    Path(directory).mkdir(parents=True, exist_ok=True)
    connection_created.connect(_on_connection, dispatch_uid="podi-sqlcount")
    _start_writer()
    atexit.register(_write)
    # a process forked after set-up (several web processes) counts on its own, from zero
    os.register_at_fork(after_in_child=_after_fork)


def _start_writer() -> None:
    threading.Thread(target=_writer, name="podi-sqlcount", daemon=True).start()


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _counts.clear()
    _dirty.clear()
    _start_writer()


class SqlCountMiddleware:
    """Labels the statements of one HTTP request ``http:<METHOD> <path>`` (ids folded)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    @staticmethod
    def _label(request) -> str:
        return f"http:{request.method} {_ID_SEGMENT.sub('/{id}', request.path)}"

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        token = _label.set(self._label(request))
        try:
            return self.get_response(request)
        finally:
            _label.reset(token)

    async def _acall(self, request):
        token = _label.set(self._label(request))
        try:
            return await self.get_response(request)
        finally:
            _label.reset(token)
