"""Coze and generic HTTP executors, end to end through a real worker and loopback servers."""

from __future__ import annotations

import base64
import itertools

import pytest
from aiohttp import web

from integrations.services import api_key_create
from tasks.models import Task
from tests.servers import DEFAULT_WORKFLOW_ID
from tests.servers.base import LoopbackServer
from tests.servers.comfyui import solid_png
from tests.tasks.conftest import make_ability, make_executor, wait_status
from wallet.selectors import account_for_user

pytestmark = pytest.mark.django_db(transaction=True)

COZE_DEFINITION = {"workflowId": DEFAULT_WORKFLOW_ID, "parameters": {"prompt": "{{prompt}}"}}
COZE_SCHEMA = {
    "type": "object",
    "properties": {"prompt": {"type": "string", "minLength": 1}},
    "required": ["prompt"],
    "additionalProperties": False,
}


def coze_ability(coze, *, mode: str, max_attempts: int = 3, token: str = "test-token"):
    key = api_key_create(provider="coze", name="main", secret=token)
    executor = make_executor("coze", coze.url, kind="coze", config={"mode": mode})
    executor.api_keys.set([key])
    return make_ability(
        "story",
        [executor],
        graph=COZE_DEFINITION,
        schema=COZE_SCHEMA,
        kind="coze",
        points=4,
        max_attempts=max_attempts,
    )


def test_coze_sync_run_copies_outputs(worker, coze, funded, api):
    coze_ability(coze, mode="sync")
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "story", "params": {"prompt": 'a "quoted" cat'}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    run = coze.requests_to("/v1/workflow/run", "POST")[0]
    assert run.json["parameters"] == {"prompt": 'a "quoted" cat'}
    assert run.json.get("is_async") in (None, False)
    assert run.headers["Authorization"] == "Bearer test-token"
    assert done["result"]["data"]["prompt"] == 'a "quoted" cat'
    assert len(done["outputs"]) == 1
    assert done["outputs"][0]["mimeType"] == "image/png"
    assert (done["outputs"][0]["width"], done["outputs"][0]["height"]) == (64, 64)
    assert account_for_user(funded).balance == 996


def test_coze_async_run_polls_history(worker, coze, funded, api):
    coze_ability(coze, mode="async")
    coze.async_polls_before_done = 2
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "story", "params": {"prompt": "slow"}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"}, timeout=30)
    assert done["status"] == "succeeded", done
    task = Task.objects.get(public_id=task_id)
    assert task.external_id in coze.runs
    polls = [r for r in coze.requests if "/run_histories/" in r.path]
    assert len(polls) >= 2
    assert done["result"]["data"]["prompt"] == "slow"


def test_coze_business_error_fails_at_once(worker, coze, funded, api):
    coze_ability(coze, mode="sync")
    coze.business_error = (4000, "The parameter prompt is invalid")
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "story", "params": {"prompt": "x"}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "COZE_4000"
    assert "The parameter prompt is invalid" in done["error"]["message"]
    assert done["attempts"] == 1
    assert account_for_user(funded).balance == 1000


def test_coze_5xx_is_retried_then_fails(worker, coze, funded, api):
    coze_ability(coze, mode="sync", max_attempts=2)
    coze.http_status_override = 502
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "story", "params": {"prompt": "x"}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"}, timeout=30)
    assert done["status"] == "failed"
    assert done["attempts"] == 2
    assert len(coze.requests_to("/v1/workflow/run", "POST")) == 2
    assert account_for_user(funded).balance == 1000


def test_coze_wrong_key_is_permanent(worker, coze, funded, api):
    coze_ability(coze, mode="sync", token="wrong-token")
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "story", "params": {"prompt": "x"}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["error"]["code"] == "COZE_4100"
    assert done["attempts"] == 1


class ModelApiServer(LoopbackServer):
    """An in-house model service: an OpenAI-style sync endpoint and a polled job endpoint."""

    def reset_state(self) -> None:
        self.jobs: dict[str, int] = {}
        self.ids = itertools.count(1)

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self.generate)
        app.router.add_post("/jobs", self.create_job)
        app.router.add_get("/jobs/{id}", self.job)
        app.router.add_get("/files/{name}", self.file)

    async def generate(self, request):
        body = await request.json()
        if body.get("prompt") == "refuse":
            return web.json_response({"error": "content policy"}, status=400)
        png = solid_png(3, 2, (10, 20, 30))
        return web.json_response({"data": [{"b64_json": base64.b64encode(png).decode()}]})

    async def create_job(self, request):
        job_id = f"job-{next(self.ids)}"
        self.jobs[job_id] = 0
        return web.json_response({"id": job_id, "status": "queued"})

    async def job(self, request):
        job_id = request.match_info["id"]
        self.jobs[job_id] += 1
        if self.jobs[job_id] < 3:
            return web.json_response({"id": job_id, "status": 40 * self.jobs[job_id]})
        return web.json_response(
            {
                "id": job_id,
                "status": "succeeded",
                "result": {"url": f"{self.url}/files/{job_id}.png"},
            }
        )

    async def file(self, request):
        return web.Response(body=solid_png(5, 5, (0, 0, 0)), content_type="image/png")


@pytest.fixture
def model_api():
    with ModelApiServer() as server:
        yield server


def test_http_executor_sync_base64(worker, model_api, funded, api):
    definition = {
        "method": "POST",
        "path": "/v1/images/generations",
        "body": {"prompt": "{{prompt}}", "n": 1},
        "result": {"base64": ["data.*.b64_json"], "mimeType": "image/png"},
    }
    make_ability(
        "gen",
        [make_executor("model", model_api.url, kind="http")],
        graph=definition,
        schema=COZE_SCHEMA,
        kind="http",
        points=3,
    )
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "gen", "params": {"prompt": "sky"}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert (done["outputs"][0]["width"], done["outputs"][0]["height"]) == (3, 2)
    refused = client.post(
        "/api/tasks/v1/submit", json={"action": "gen", "params": {"prompt": "refuse"}}
    ).json()["taskId"]
    done = wait_status(client, refused, {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "EXECUTOR_REJECTED"
    assert "content policy" in done["error"]["message"]
    assert done["attempts"] == 1


def test_http_executor_polls_a_job(worker, model_api, funded, api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the output URL is on loopback in this test
    definition = {
        "method": "POST",
        "path": "/jobs",
        "body": {"prompt": "{{prompt}}"},
        "result": {"urls": ["/result/url"], "mimeType": "image/png"},
    }
    config = {
        "poll": {
            "url": "/jobs/{id}",
            "interval": 0.1,
            "status_path": "status",
            "result_path": "result",
        }
    }
    make_ability(
        "job",
        [make_executor("model", model_api.url, kind="http", config=config)],
        graph=definition,
        schema=COZE_SCHEMA,
        kind="http",
        points=3,
    )
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "job", "params": {"prompt": "sea"}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert Task.objects.get(public_id=task_id).external_id == "job-1"
    assert done["result"]["url"].endswith("/files/job-1.png")
    assert (done["outputs"][0]["width"], done["outputs"][0]["height"]) == (5, 5)
