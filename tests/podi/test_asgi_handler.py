"""HTTP through ``podi.asgi`` (ADRs 0020, 0027): everything synchronous of a request (its signals,
Django's middleware chain and the view) runs in one hop to a long-lived thread of the handler's
pool, and every middleware still does its part."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import warnings

import httpx
import pytest
from asgiref.sync import iscoroutinefunction
from django.core import signals

from podi.asgi import application, django_application
from podi.asgi_handler import OneHopASGIHandler
from tests.podi.urls import STREAMED_BODY, STREAMED_CONNECTIONS

pytestmark = pytest.mark.django_db(transaction=True)


def _get(path: str, **kwargs) -> httpx.Response:
    async def call():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get(path, **kwargs)

    return asyncio.run(call())


def test_the_chain_is_built_sync_and_runs_in_one_hop():
    assert isinstance(django_application, OneHopASGIHandler)
    # A sync chain: no middleware in it is entered through ``sync_to_async`` of its own.
    assert not iscoroutinefunction(django_application._middleware_chain)


def test_every_middleware_still_answers_through_the_asgi_application(settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    response = _get("/health", headers={"X-Request-ID": "probe-1", "Origin": "http://evil.test"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == "probe-1"  # RequestIdMiddleware
    assert response.headers["X-Frame-Options"] == "DENY"  # clickjacking
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # security
    assert "access-control-allow-origin" not in response.headers  # CORS: not an allowed origin
    # A NUL in the query string is refused before any view (RejectNulMiddleware).
    refused = _get("/api/tasks/v1?status=%00")
    assert refused.status_code == 400
    assert refused.json()["code"] == "VALIDATION_ERROR"
    # Unauthenticated API call: DRF's answer, through the same single hop.
    assert _get("/api/tasks/v1").status_code == 401


def test_requests_in_parallel_each_get_their_own_answer(settings):
    settings.ALLOWED_HOSTS = ["testserver"]

    async def many():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await asyncio.gather(
                *(client.get("/health", headers={"X-Request-ID": f"r{i}"}) for i in range(20))
            )

    responses = asyncio.run(many())
    assert [r.headers["X-Request-ID"] for r in responses] == [f"r{i}" for i in range(20)]
    assert {r.status_code for r in responses} == {200}
    assert threading.active_count() < 200  # no thread left per request


def _run(app, paths: list[str], *, parallel: bool) -> list[httpx.Response]:
    async def call():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            if parallel:
                return await asyncio.gather(*(client.get(path) for path in paths))
            return [await client.get(path) for path in paths]

    return asyncio.run(call())


@pytest.fixture
def request_threads():
    """(signal name, thread) for every request_started / request_finished while the test runs."""
    seen: list[tuple[str, threading.Thread]] = []

    def started(**kwargs):
        seen.append(("started", threading.current_thread()))

    def finished(**kwargs):
        seen.append(("finished", threading.current_thread()))

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield seen
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


def test_requests_run_on_the_pools_long_lived_threads_not_a_thread_each(settings, request_threads):
    settings.ALLOWED_HOSTS = ["testserver"]
    handler = OneHopASGIHandler(threads=64)
    try:
        sequential = _run(handler, ["/health"] * 40, parallel=False)
        assert {r.status_code for r in sequential} == {200}
        assert [name for name, _ in request_threads] == ["started", "finished"] * 40
        threads = {thread for _, thread in request_threads}
        # One after another: a thread a request would be 40. The pool reuses an idle thread (it
        # may start a second one when a request comes before the last one's thread is idle).
        assert len(threads) <= 4, threads
        assert all(thread.name.startswith("podi-web") for thread in threads)
    finally:
        handler.pool.shutdown()

    handler = OneHopASGIHandler(threads=3)
    try:
        request_threads.clear()
        parallel = _run(handler, ["/health"] * 30, parallel=True)
        assert {r.status_code for r in parallel} == {200}
        # At once: never more threads than the pool has.
        assert 1 <= len({thread for _, thread in request_threads}) <= 3
    finally:
        handler.pool.shutdown()


def test_a_request_is_finished_on_the_thread_it_started_on(settings, request_threads):
    """request_finished hands the thread's database connection back (close_old_connections): it
    must run where the view ran, which is why the whole request is one hop."""
    settings.ALLOWED_HOSTS = ["testserver"]
    responses = _run(application, ["/health", "/nope", "/api/tasks/v1"] * 5, parallel=True)
    assert sorted({r.status_code for r in responses}) == [200, 401, 404]
    started = [thread for name, thread in request_threads if name == "started"]
    finished = [thread for name, thread in request_threads if name == "finished"]
    assert len(started) == len(finished) == 15
    assert sorted(t.ident for t in started) == sorted(t.ident for t in finished)


@pytest.mark.urls("tests.podi.urls")
def test_a_streamed_answer_arrives_whole_and_is_closed_after_it(settings, request_threads):
    settings.ALLOWED_HOSTS = ["testserver"]
    STREAMED_CONNECTIONS.clear()
    with warnings.catch_warnings():
        # Django's own handler warns, then reads a synchronous stream whole into memory.
        warnings.simplefilter("error")
        (response,) = _run(application, ["/api/test/streamed"], parallel=False)
    assert response.status_code == 200
    assert response.content == STREAMED_BODY
    # A streamed answer is closed (request_finished) once its last chunk went out.
    assert [name for name, _ in request_threads] == ["started", "finished"]
    # The view's thread handed its database connection back (to the pool on PostgreSQL) when
    # the view returned, not at the close() after the last chunk, which may run on another
    # thread and would leave it checked out.
    assert STREAMED_CONNECTIONS and set(STREAMED_CONNECTIONS) == {None}


def test_a_web_process_freezes_its_startup_heap_with_every_view_loaded():
    """podi.asgi loads the URLconf and freezes what is alive (runtime.freeze_startup_heap): a full
    collection in a web process with many sockets open then walks the sockets' objects only."""
    probe = (
        "import gc, sys; import podi.asgi; "
        "print(gc.get_freeze_count(), 'tasks.apis' in sys.modules, 'wallet.apis' in sys.modules)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "podi.settings"}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    frozen, tasks_loaded, wallet_loaded = out.stdout.split()
    assert int(frozen) > 50_000
    assert tasks_loaded == "True" and wallet_loaded == "True"
