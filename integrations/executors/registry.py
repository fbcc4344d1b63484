"""Which adapter runs a task on which kind of executor, and this process's executor sessions."""

from __future__ import annotations

import threading

from integrations.executors.base import ExecutorError
from integrations.executors.clients import executor_fingerprint, shared_clients_close
from integrations.executors.comfyui.run import ComfyUIRunner
from integrations.executors.comfyui.session import ComfyUISession, Spawn
from integrations.executors.coze.run import CozeRunner
from integrations.executors.http.run import HttpRunner


def run_adapter_for(executor):
    adapters = {"comfyui": ComfyUIRunner, "coze": CozeRunner, "http": HttpRunner}
    try:
        adapter = adapters[executor.kind]
    except KeyError:
        raise ExecutorError(
            f"No adapter for executor kind {executor.kind!r}", permanent=True
        ) from None
    return adapter.from_executor(executor)


# One session per ComfyUI executor per process, keyed by the executor and a fingerprint of its
# connection settings: an edited executor gets a new session; the old one is closed once it
# follows nothing (docs/adr/0015-executor-sessions.md).
_sessions: dict[tuple[int, str], ComfyUISession] = {}
_sessions_lock = threading.Lock()


def session_for(executor, *, spawn: Spawn) -> ComfyUISession | None:
    """This process's session for ``executor`` (None for kinds that run thread-per-task)."""
    if executor.kind != "comfyui":
        return None
    key = (executor.pk, executor_fingerprint(executor))
    with _sessions_lock:
        session = _sessions.get(key)
        if session is not None:
            return session
        stale = [k for k, s in _sessions.items() if k[0] == executor.pk and s.idle]
        retired = [_sessions.pop(k) for k in stale]
        session = ComfyUISession(
            ComfyUIRunner.from_executor(executor), spawn=spawn, name=f"{executor.pk}"
        )
        _sessions[key] = session
    for old in retired:
        old.close()
    return session.start()


def sessions_close_all() -> None:
    """Close every executor session and shared client of this process (worker shutdown)."""
    with _sessions_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for session in sessions:
        session.close()
    shared_clients_close()


def sessions_open() -> list[ComfyUISession]:
    """The executor sessions this process has open (for tests and diagnostics)."""
    with _sessions_lock:
        return list(_sessions.values())
