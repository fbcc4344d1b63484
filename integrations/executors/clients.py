"""One HTTP client per executor per process (docs/adr/0015-executor-sessions.md).

A run adapter used to open (and close) an ``httpx.Client`` for every run: a new TCP (and TLS)
connection per task. ``shared_client`` keeps one pooled client per executor in this process
instead. The key includes a fingerprint of the executor's connection settings, so an edited
executor gets a fresh client; the old one is closed. Per-run headers (a picked API key) are
passed per request, never stored on the shared client.
"""

from __future__ import annotations

import hashlib
import json
import threading

import httpx

from integrations.executors.runtime import ssl_context

_clients: dict[int, tuple[str, httpx.Client]] = {}
_retired: list[httpx.Client] = []  # replaced after an edit; closed at shutdown, not mid-run
_lock = threading.Lock()


def executor_fingerprint(executor) -> str:
    """What a connection to ``executor`` depends on: kind, base URL and config."""
    raw = json.dumps(
        [executor.kind, executor.base_url, executor.config or {}], sort_keys=True, default=str
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def shared_client(
    executor, *, base_url: str, timeout: httpx.Timeout, headers: dict
) -> httpx.Client:
    """This process's pooled client for ``executor`` (thread-safe; never close it yourself)."""
    fingerprint = executor_fingerprint(executor)
    with _lock:
        known = _clients.get(executor.pk)
        if known is not None and known[0] == fingerprint:
            return known[1]
        client = httpx.Client(
            base_url=base_url, timeout=timeout, headers=headers, verify=ssl_context()
        )
        _clients[executor.pk] = (fingerprint, client)
        if known is not None:
            # The executor was edited: runs still using the old client may finish with it.
            _retired.append(known[1])
    return client


def shared_clients_close() -> None:
    """Close every shared client (worker shutdown)."""
    with _lock:
        clients = [client for _, client in _clients.values()] + _retired
        _clients.clear()
        _retired.clear()
    for client in clients:
        client.close()
