"""Fixtures for task tests: a real worker, real HTTP, and executors on loopback."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import dramatiq
import httpx
import pytest
from django.db import close_old_connections, transaction

from integrations.models import Ability, Executor, Workflow, WorkflowBinding
from integrations.services import workflow_version_create
from podi.runtime import import_actor_modules
from tests.conftest import access_token
from tests.servers import ComfyUITestServer, CozeTestServer
from wallet.services import wallet_grant

INVERT_GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {
            "width": "{{width}}",
            "height": "{{height}}",
            "batch_size": 1,
            "color": "{{color}}",
        },
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
}
INVERT_SCHEMA = {
    "type": "object",
    "properties": {
        "width": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 64},
        "height": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 48},
        "color": {"type": "integer", "minimum": 0, "maximum": 16777215, "default": 16711680},
    },
    "additionalProperties": False,
}
SLEEP_GRAPH = {
    "1": {"class_type": "PodiTestSleep", "inputs": {"seconds": "{{seconds}}", "steps": 10}},
}
SLEEP_SCHEMA = {
    "type": "object",
    "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 60, "default": 0.2}},
    "additionalProperties": False,
}


@contextlib.contextmanager
def running_worker(threads: int):
    """A real Dramatiq worker on the configured broker (stub or Redis), in this process."""
    broker = dramatiq.get_broker()
    import_actor_modules()
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=10_000)
        broker.flush_all()


@pytest.fixture
def worker(transactional_db):
    with running_worker(6) as running:
        yield running


@pytest.fixture
def comfy():
    with ComfyUITestServer() as server:
        yield server


@pytest.fixture
def comfy2():
    with ComfyUITestServer() as server:
        yield server


@pytest.fixture
def coze():
    with CozeTestServer() as server:
        yield server


def make_executor(name: str, url: str, *, kind: str = "comfyui", max_concurrency: int = 4, **extra):
    return Executor.objects.create(
        name=name, kind=kind, base_url=url, max_concurrency=max_concurrency, **extra
    )


def make_ability(
    code: str,
    executors: list[Executor],
    *,
    graph=None,
    schema=None,
    points: int = 10,
    kind: str = "comfyui",
    max_attempts: int = 3,
    queue_timeout: int = 600,
    run_timeout: int = 600,
    priorities: list[int] | None = None,
    **ability_fields,
) -> Ability:
    workflow = Workflow.objects.create(name=f"wf-{code}", kind=kind)
    workflow_version_create(
        workflow=workflow,
        definition=graph if graph is not None else INVERT_GRAPH,
        params_schema=schema if schema is not None else INVERT_SCHEMA,
        activate=True,
    )
    ability = Ability.objects.create(
        code=code, display_name=code.title(), points=points, **ability_fields
    )
    for index, executor in enumerate(executors):
        WorkflowBinding.objects.create(
            ability=ability,
            workflow=workflow,
            executor=executor,
            priority=(priorities or [0] * len(executors))[index],
            max_attempts=max_attempts,
            queue_timeout=queue_timeout,
            run_timeout=run_timeout,
        )
    return ability


def add_binding(ability: Ability, executor: Executor, **fields) -> WorkflowBinding:
    """Another binding of ``ability``'s workflow, on ``executor`` (``fields``: priority, timeouts…)."""
    return WorkflowBinding.objects.create(
        ability=ability, workflow=ability.bindings.first().workflow, executor=executor, **fields
    )


@pytest.fixture
def funded(owner):
    wallet_grant(user=owner, points=1000, reason="test", reference="seed-owner")
    return owner


@pytest.fixture
def api(live_server, settings):
    """``api(user_or_token)`` → an httpx client on the live server, logged in."""
    settings.PUBLIC_BASE_URL = live_server.url
    clients: list[httpx.Client] = []

    def build(user_or_token=None) -> httpx.Client:
        headers = {}
        if user_or_token is not None:
            token = user_or_token if isinstance(user_or_token, str) else access_token(user_or_token)
            headers["Authorization"] = f"Bearer {token}"
        client = httpx.Client(base_url=live_server.url, headers=headers, timeout=30)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def wait_status(client: httpx.Client, task_id: str, statuses: set[str], timeout: float = 20.0):
    def check():
        body = client.get(f"/api/tasks/v1/{task_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(check, timeout=timeout)


@contextlib.contextmanager
def row_held(row, *, at_most: float = 15):
    """Another transaction holds ``row``'s lock (a submit's claim, a finish's release, another
    dispatch pass starting a task: not yet committed) until the block ends, or ``at_most`` s."""
    locked, release = threading.Event(), threading.Event()

    def hold_the_row():
        try:
            with transaction.atomic():
                type(row).objects.select_for_update().get(pk=row.pk)
                locked.set()
                release.wait(at_most)
        finally:
            close_old_connections()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        release.set()
        holder.join(30)
