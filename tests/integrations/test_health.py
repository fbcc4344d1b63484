"""Executor health checks against protocol-faithful servers on loopback (no mocks)."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import dramatiq
import pytest
from aiohttp import web
from django.utils import timezone

from integrations.actors import executor_health_check_actor, executors_health_refresh
from integrations.models import Executor
from integrations.services import (
    ability_create,
    api_key_create,
    binding_create,
    executor_create,
    executor_health_check,
    executor_update,
    workflow_create,
    workflow_version_create,
)
from podi.reconcile import registered_steps
from tests.servers.base import LoopbackServer
from tests.servers.comfyui import ComfyUITestServer
from tests.servers.coze import DEFAULT_WORKFLOW_ID, CozeTestServer

from .conftest import graph, schema

pytestmark = pytest.mark.django_db


@pytest.fixture
def comfy():
    with ComfyUITestServer() as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def comfy_executor_for(url: str, **config) -> Executor:
    executor = executor_create(
        name="gpu", kind="comfyui", base_url=url, config={"read_timeout": 2, **config}
    )
    workflow = workflow_create(name="invert", kind="comfyui")
    workflow_version_create(workflow=workflow, definition=graph(), params_schema=schema())
    ability = ability_create(code="invert", display_name="Invert")
    binding_create(ability=ability, workflow=workflow, executor=executor)
    return executor


def check(executor: Executor) -> Executor:
    started = time.monotonic()
    checked = executor_health_check(executor=executor)
    assert time.monotonic() - started < 10
    stored = Executor.objects.get(pk=executor.pk)
    assert stored.health_status == checked.health_status
    assert stored.health_checked_at is not None
    return stored


# ------------------------------------------------------------------------------ ComfyUI


def test_comfyui_up(comfy):
    executor = check(comfy_executor_for(comfy.url))
    assert executor.health_status == "healthy"
    assert executor.health_error == ""
    assert executor.health_details["comfyuiVersion"] == "0.8.0"
    assert executor.health_details["requiredNodeClasses"] == [
        "EmptyImage",
        "ImageInvert",
        "SaveImage",
    ]
    paths = [r.path for r in comfy.requests]
    assert paths == ["/api/system_stats", "/api/object_info"]
    assert all("Origin" not in r.headers for r in comfy.requests)


def test_comfyui_without_api_prefix(comfy):
    executor = check(comfy_executor_for(comfy.url, api_prefix=""))
    assert executor.health_status == "healthy"
    assert [r.path for r in comfy.requests] == ["/system_stats", "/object_info"]


def test_comfyui_down():
    executor = check(comfy_executor_for(f"http://127.0.0.1:{free_port()}"))
    assert executor.health_status == "unhealthy"
    assert executor.health_error.startswith("Cannot connect to http://127.0.0.1:")


def test_comfyui_killed_after_being_healthy(comfy):
    executor = check(comfy_executor_for(comfy.url))
    assert executor.health_status == "healthy"
    comfy.kill()
    executor = check(executor)
    assert executor.health_status == "unhealthy"
    assert "Cannot connect" in executor.health_error


def test_comfyui_slow(comfy):
    comfy.http_delay = 3
    executor = check(comfy_executor_for(comfy.url, read_timeout=0.5))
    assert executor.health_status == "unhealthy"
    assert executor.health_error.endswith("did not answer within 0.5 s.")


def test_comfyui_garbage(comfy):
    comfy.garbage = True
    executor = check(comfy_executor_for(comfy.url))
    assert executor.health_status == "unhealthy"
    assert "not JSON" in executor.health_error
    assert "/system_stats" in executor.health_error


def test_comfyui_server_error(comfy):
    comfy.http_status_override = 500
    executor = check(comfy_executor_for(comfy.url))
    assert executor.health_status == "unhealthy"
    assert "HTTP 500" in executor.health_error


def test_comfyui_missing_node_class_marks_the_binding_not_the_executor(comfy):
    comfy.installed_nodes = ["EmptyImage", "SaveImage"]
    executor = check(comfy_executor_for(comfy.url))
    assert executor.health_status == "healthy"
    assert executor.health_error == ""
    assert executor.health_details["missingNodeClasses"] == ["ImageInvert"]
    assert executor.is_dispatchable
    assert executor.node_inventory.node_classes == ["EmptyImage", "SaveImage"]
    binding = executor.bindings.get()
    assert binding.missing_node_classes == ["ImageInvert"]
    assert binding.nodes_checked_at is not None
    assert not binding.is_runnable
    # Installed later: the next check clears it.
    comfy.installed_nodes = None
    check(executor)
    binding.refresh_from_db()
    assert binding.missing_node_classes == []
    assert binding.is_runnable


def test_comfyui_disabled_binding_does_not_require_its_nodes(comfy):
    comfy.installed_nodes = ["EmptyImage", "SaveImage"]
    executor = comfy_executor_for(comfy.url)
    executor.bindings.update(enabled=False)
    checked = check(executor)
    assert checked.health_status == "healthy"
    assert checked.health_details["missingNodeClasses"] == []


class NotComfy(LoopbackServer):
    """Something else listening where ComfyUI should be: JSON of the wrong shape."""

    def setup_routes(self, app: web.Application) -> None:
        async def answer(request):
            return web.json_response(["not", "comfy"])

        app.router.add_get("/{tail:.*}", answer)


def test_something_else_answers_json():
    with NotComfy() as other:
        executor = check(comfy_executor_for(other.url))
    assert executor.health_status == "unhealthy"
    assert "system_stats" in executor.health_error


# ------------------------------------------------------------------------------ Coze


@pytest.fixture
def coze():
    with CozeTestServer(token="pat_good_token_1234") as server:
        yield server


GOOD_TOKEN = "pat_good_token_1234"


def coze_executor_for(url: str, secret: str | None = GOOD_TOKEN, **config) -> Executor:
    executor = executor_create(name="coze", kind="coze", base_url=url, config=config)
    if secret:
        executor.api_keys.add(api_key_create(provider="coze", name="k", secret=secret))
    workflow = workflow_create(name="coze-wf", kind="coze")
    workflow_version_create(
        workflow=workflow,
        definition={"workflowId": DEFAULT_WORKFLOW_ID, "parameters": {"prompt": "{{prompt}}"}},
        params_schema={"type": "object", "properties": {"prompt": {"type": "string"}}},
    )
    ability = ability_create(code="chat", display_name="Chat")
    binding_create(ability=ability, workflow=workflow, executor=executor)
    return executor


def test_coze_healthy_with_a_good_key(coze):
    executor = check(coze_executor_for(coze.url))
    assert executor.health_status == "healthy"
    assert executor.health_details["workflowIds"] == [DEFAULT_WORKFLOW_ID]
    assert executor.health_details["apiKey"] == "pat_…1234"
    (probe,) = coze.requests
    assert probe.path == f"/v1/workflows/{DEFAULT_WORKFLOW_ID}/run_histories/0"
    assert probe.headers["Authorization"] == "Bearer pat_good_token_1234"
    assert coze.runs == {}  # the probe never runs a workflow
    assert "pat_good_token_1234" not in executor.health_error + str(executor.health_details)


def test_coze_bad_key(coze):
    executor = check(coze_executor_for(coze.url, secret="pat_wrong_token_9999"))
    assert executor.health_status == "unhealthy"
    assert executor.health_error.startswith("Coze rejected the API key: Coze error 4100")
    assert "logid" in executor.health_error


def test_coze_without_a_usable_key(coze):
    executor = check(coze_executor_for(coze.url, secret=None))
    assert executor.health_status == "unhealthy"
    assert "No usable API key" in executor.health_error
    assert coze.requests == []


def test_coze_probe_can_be_disabled(coze):
    executor = coze_executor_for(coze.url)
    executor_update(executor=executor, config={"health_probe": False})
    assert check(executor).health_status == "healthy"
    assert coze.requests == []


def test_coze_down_and_html_error():
    executor = check(coze_executor_for(f"http://127.0.0.1:{free_port()}"))
    assert executor.health_status == "unhealthy"
    with CozeTestServer(token="pat_good_token_1234") as server:
        server.http_status_override = 502
        executor_update(executor=executor, base_url=server.url)
        executor = check(executor)
    assert executor.health_status == "unhealthy"
    assert "HTTP 502" in executor.health_error


# ------------------------------------------------------------------------------ HTTP


class HealthServer(LoopbackServer):
    status = 200

    def setup_routes(self, app: web.Application) -> None:
        async def health(request):
            return web.Response(status=self.status, text="ok")

        app.router.add_get("/healthz", health)


def test_http_health_url():
    with HealthServer() as server:
        executor = executor_create(
            name="api", kind="http", base_url=server.url, config={"health_url": "/healthz"}
        )
        assert check(executor).health_status == "healthy"
        server.status = 503
        executor = check(executor)
        assert executor.health_status == "unhealthy"
        assert "HTTP 503" in executor.health_error
        executor_update(executor=executor, config={"health_url": server.url + "/healthz"})
        server.status = 204
        assert check(executor).health_status == "healthy"
    unconfigured = executor_create(name="api2", kind="http", base_url="http://127.0.0.1:1")
    unconfigured = check(unconfigured)
    assert unconfigured.health_status == "unknown"
    assert unconfigured.is_dispatchable


# ------------------------------------------------------------------------------ reconciler


def test_reconcile_step_is_registered():
    assert "integrations.actors.executors_health_refresh" in registered_steps()


def test_reconcile_step_claims_due_executors_once(
    comfy, settings, django_capture_on_commit_callbacks
):
    settings.EXECUTOR_HEALTH_INTERVAL = 60
    due = comfy_executor_for(comfy.url)
    fresh = executor_create(name="fresh", kind="comfyui", base_url=comfy.url)
    Executor.objects.filter(pk=fresh.pk).update(health_checked_at=timezone.now())
    off = executor_create(name="off", kind="comfyui", base_url=comfy.url, enabled=False)
    broker = dramatiq.get_broker()
    queue = executor_health_check_actor.queue_name
    broker.flush(queue)
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        assert executors_health_refresh() == 1
        assert executors_health_refresh() == 0  # claimed: not enqueued twice
    assert len(enqueued) == 1  # one message, sent after commit
    # The actor body does the check and releases the claim.
    assert executor_health_check_actor(due.pk) == "healthy"
    due.refresh_from_db()
    assert due.health_requested_at is None
    off.refresh_from_db()
    assert off.health_checked_at is None
    assert executor_health_check_actor(999999) is None
    # Stale again after the interval.
    Executor.objects.filter(pk=due.pk).update(
        health_checked_at=timezone.now() - timedelta(seconds=61)
    )
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        assert executors_health_refresh() == 1
    assert len(enqueued) == 1


@pytest.mark.django_db(transaction=True)
def test_reconcile_step_through_a_real_worker(comfy, settings):
    settings.EXECUTOR_HEALTH_INTERVAL = 60
    executor = comfy_executor_for(comfy.url)
    broker = dramatiq.get_broker()
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        assert executors_health_refresh() == 1
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            executor.refresh_from_db()
            if executor.health_checked_at is not None:
                break
            time.sleep(0.1)
    finally:
        worker.stop()
    assert executor.health_status == "healthy"
