"""HTTP-executor output URLs go through the SSRF guard: the executor's own origin is trusted,
anything else (directly or by redirect) must be a public address."""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.servers.base import LoopbackServer
from tests.servers.comfyui import solid_png
from tests.tasks.conftest import make_ability, make_executor, wait_status
from tests.tasks.test_coze_and_http import COZE_SCHEMA
from wallet.selectors import account_for_user

pytestmark = pytest.mark.django_db(transaction=True)

DEFINITION = {
    "method": "POST",
    "path": "/render",
    "body": {"prompt": "{{prompt}}"},
    "result": {"urls": ["output"], "mimeType": "image/png"},
}


class Metadata(LoopbackServer):
    """Stands in for a cloud metadata endpoint that must never be reached."""

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/latest/meta-data", self.secret)

    async def secret(self, request):
        return web.Response(body=solid_png(2, 2, (9, 9, 9)), content_type="image/png")


class ModelApi(LoopbackServer):
    """Answers with an output URL chosen by the prompt: its own file, a redirect, or elsewhere."""

    elsewhere = ""

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/render", self.render)
        app.router.add_get("/files/out.png", self.file)
        app.router.add_get("/files/moved.png", self.moved)

    async def render(self, request):
        prompt = (await request.json())["prompt"]
        output = {
            "own": f"{self.url}/files/out.png",
            "redirect": f"{self.url}/files/moved.png",
            "elsewhere": self.elsewhere,
        }[prompt]
        return web.json_response({"output": output})

    async def file(self, request):
        return web.Response(body=solid_png(4, 4, (1, 2, 3)), content_type="image/png")

    async def moved(self, request):
        raise web.HTTPFound(self.elsewhere)


@pytest.fixture
def servers():
    with Metadata() as metadata, ModelApi() as model:
        model.elsewhere = f"{metadata.url}/latest/meta-data"
        yield model, metadata


def run(api, funded, prompt: str) -> dict:
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "render", "params": {"prompt": prompt}}
    ).json()["taskId"]
    return wait_status(client, task_id, {"succeeded", "failed"}, timeout=30)


@pytest.fixture
def ability(servers):
    model, _ = servers
    return make_ability(
        "render",
        [make_executor("model", model.url, kind="http")],
        graph=DEFINITION,
        schema=COZE_SCHEMA,
        kind="http",
        points=3,
    )


def test_an_output_on_the_executors_own_origin_is_downloaded(
    worker, servers, ability, funded, api, settings
):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    done = run(api, funded, "own")
    assert done["status"] == "succeeded", done
    assert (done["outputs"][0]["width"], done["outputs"][0]["height"]) == (4, 4)


@pytest.mark.parametrize("prompt", ["elsewhere", "redirect"])
def test_an_output_url_on_a_private_address_is_refused(
    worker, servers, ability, funded, api, settings, prompt
):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    _, metadata = servers
    done = run(api, funded, prompt)
    assert done["status"] == "failed", done
    assert "Refused to download" in done["error"]["message"]
    assert done["attempts"] == 1  # permanent: not retried
    assert metadata.requests == []
    assert account_for_user(funded).balance == 1000  # released, not charged


def test_with_private_addresses_allowed_the_same_output_is_fetched(
    worker, servers, ability, funded, api, settings
):
    """Proves the refusals above come from the guard: turned off, the fetch happens."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    _, metadata = servers
    done = run(api, funded, "redirect")
    assert len(metadata.requests) == 1
    assert done["status"] == "succeeded", done
    assert (done["outputs"][0]["width"], done["outputs"][0]["height"]) == (2, 2)
