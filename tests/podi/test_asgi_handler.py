"""HTTP through ``podi.asgi`` (ADR 0020): Django's middleware chain and the view run in one thread
hop per request, and every middleware still does its part."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import httpx
import pytest
from asgiref.sync import iscoroutinefunction

from podi.asgi import application, django_application
from podi.asgi_handler import OneHopASGIHandler

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
