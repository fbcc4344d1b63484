"""Smoke tests for every console page and action of the agent admin."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from integrations.agents.models import Agent, AgentTask, Alert, Manifest, ManifestVersion
from integrations.agents.services.agent_task_reports import agent_task_report
from integrations.agents.services.agent_tasks import agent_task_create
from integrations.agents.services.agents import agent_update
from integrations.agents.services.alerts import alert_raise
from integrations.agents.services.liveness import agent_heartbeat, agents_mark_offline
from integrations.agents.services.manifests import manifest_create, manifest_update
from integrations.services import executor_create

from .conftest import SHA_B, manifest_content

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(staff):
    client = Client()
    client.force_login(staff)
    return client


def url(name: str, *args) -> str:
    return reverse(f"admin:agents_{name}", args=args)


def page(console, path: str, query: str = "") -> str:
    response = console.get(path + query)
    assert response.status_code == 200, (path, query, response.status_code)
    return response.content.decode()


def action(console, changelist: str, name: str, ids: list) -> object:
    return console.post(
        changelist, {"action": name, "_selected_action": [str(i) for i in ids], "index": "0"}
    )


@pytest.fixture
def scene(agent, other_agent, manifest, agent_server):
    """An online agent with a pushed task (with events), an offline one, alerts."""
    agent_update(agent=agent, base_url=agent_server.url)
    agent_heartbeat(agent=agent, agent_version="1.4.2", comfyui_version="0.8.0", cpu=12.5)
    task = agent_task_create(agent=agent, actions=["sync_models"], manifest=manifest)
    agent_task_report(task=task, message="sdxl <b>40%</b>", progress=40)
    agent_heartbeat(agent=other_agent, now=timezone.now() - timedelta(minutes=10))
    agents_mark_offline()
    alert_raise(agent=agent, type="disk_low", message="12 GB <i>left</i>")
    content = manifest_content()
    content["models"][0]["sha256"] = SHA_B
    manifest_update(manifest=manifest, content=content, changelog="rebuilt")
    return {"task": task, "token": agent_server.pushes[0]["token"]}


# ------------------------------------------------------------------------------ agents


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?liveness=offline",
        "?liveness=online",
        "?liveness=silent",
        "?liveness=never",
        "?enabled__exact=1",
        "?executor__health_status__exact=unhealthy",
        "?q=agent",
    ],
)
def test_agent_changelist(console, scene, query):
    text = page(console, url("agent_changelist"), query)
    assert scene["token"] not in text
    if query in ("", "?q=agent"):
        assert "agent-1" in text and "agent-2" in text
        assert "offline" in text and "online" in text
        assert "CPU 12.5%" in text
    if query == "?liveness=offline":
        assert "agent-2" in text and ">agent-1<" not in text


def test_agent_pages(console, scene, agent):
    text = page(console, url("agent_change", agent.pk))
    assert "Mint token" in text and "Push sync task" in text
    assert "1.4.2" in text and "sync_models" in text
    assert "12 GB &lt;i&gt;left&lt;/i&gt;" in text  # alerts inline, escaped
    assert scene["token"] not in text
    page(console, url("agent_add"))


def test_agent_add_and_change_through_the_form(console, executor):
    free = executor_create(name="gpu-9", kind="comfyui", base_url="http://127.0.0.1:9")
    form = {
        "name": "agent-9",
        "executor": str(free.pk),
        "base_url": "http://10.0.0.9:9000",
        "enabled": "on",
        "description": "",
        "tasks-TOTAL_FORMS": "0",
        "tasks-INITIAL_FORMS": "0",
        "alerts-TOTAL_FORMS": "0",
        "alerts-INITIAL_FORMS": "0",
    }
    response = console.post(url("agent_add"), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    agent = Agent.objects.get(name="agent-9")
    bad = console.post(url("agent_change", agent.pk), {**form, "base_url": "ftp://x"})
    assert bad.status_code == 200
    assert "Must be an http(s) URL with a host." in bad.content.decode()
    agent.refresh_from_db()
    assert agent.base_url == "http://10.0.0.9:9000"


def test_mint_token_page_shows_it_once(console, agent):
    link = url("agent_mint_token", agent.pk)
    text = page(console, link)
    assert "Mint token" in text
    agent.refresh_from_db()
    assert agent.token_issued_at is None  # GET mints nothing
    response = console.post(link, {})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = re.search(r'id="agent-token"[^>]*>([^<]+)<', response.content.decode()).group(1)
    assert token.count(".") == 2
    assert token not in page(console, url("agent_change", agent.pk))
    assert token not in page(console, url("agent_changelist"))
    # Revoke-and-mint from the same page.
    console.post(link, {"revoke_existing": "1"})
    agent.refresh_from_db()
    assert agent.token_version == 2


def test_push_task_page(console, agent, manifest, agent_server):
    agent_update(agent=agent, base_url=agent_server.url)
    link = url("agent_push_task", agent.pk)
    assert "Create and push" in page(console, link)
    refused = console.post(link, {"actions": ["sync_models"]})
    assert refused.status_code == 200
    assert "Required for sync actions." in refused.content.decode()
    assert AgentTask.objects.count() == 0
    response = console.post(
        link, {"actions": ["sync_models", "sync_plugins"], "manifest": str(manifest.pk)}
    )
    task = AgentTask.objects.get()
    assert response.status_code == 302
    assert response["Location"] == url("agenttask_change", task.pk)
    assert task.status == "running"
    assert agent_server.pushes[0]["actions"] == ["sync_models", "sync_plugins"]


def test_agent_actions(console, scene, agent, other_agent):
    changelist = url("agent_changelist")
    response = action(console, changelist, "mint_token", [agent.pk])
    assert response["Location"] == url("agent_mint_token", agent.pk)
    response = action(console, changelist, "push_sync_task", [agent.pk])
    assert response["Location"] == url("agent_push_task", agent.pk)
    response = action(console, changelist, "mint_token", [agent.pk, other_agent.pk])
    assert response.status_code == 302 and response["Location"].endswith(changelist)
    action(console, changelist, "revoke_tokens", [agent.pk, other_agent.pk])
    assert set(Agent.objects.values_list("token_version", flat=True)) == {2}
    action(console, changelist, "disable", [agent.pk])
    agent.refresh_from_db()
    assert agent.enabled is False
    action(console, changelist, "enable", [agent.pk])
    agent.refresh_from_db()
    assert agent.enabled is True


# ------------------------------------------------------------------------------ manifests


def test_manifest_pages(console, scene, manifest):
    text = page(console, url("manifest_changelist"))
    assert "sdxl-stack" in text and "v2" in text and "1 models" in text
    text = page(console, url("manifest_change", manifest.pk))
    assert "version history" in text.lower() and "changes since v1" in text
    page(console, url("manifest_add"))
    text = page(console, url("manifestversion_changelist"))
    assert "sdxl-stack v2" in text
    v2 = ManifestVersion.objects.get(version=2)
    text = page(console, url("manifestversion_change", v2.pk))
    assert "model models/checkpoints/sdxl.safetensors: sha256 aaaaaaaaaaaa → bbbbbbbbbbbb" in text
    assert "JSON diff" in text
    v1 = ManifestVersion.objects.get(version=1)
    assert "the first version" in page(console, url("manifestversion_change", v1.pk))


def test_manifest_editor(console, manifest):
    content = manifest_content()
    content["plugins"] = []
    form = {
        "name": "sdxl-stack",
        "description": "",
        "content": json.dumps(content),
        "changelog": "no plugins",
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
    }
    response = console.post(url("manifest_change", manifest.pk), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    manifest.refresh_from_db()
    assert manifest.latest_version.version == 2
    assert manifest.latest_version.content["plugins"] == []
    content["models"][0]["destPath"] = "../escape.bin"
    bad = console.post(
        url("manifest_change", manifest.pk), {**form, "content": json.dumps(content)}
    )
    assert bad.status_code == 200
    assert "models[0].destPath: No &#x27;..&#x27;" in bad.content.decode()
    broken = console.post(url("manifest_change", manifest.pk), {**form, "content": "{"})
    assert "Not valid JSON" in broken.content.decode()
    assert ManifestVersion.objects.count() == 2
    response = console.post(
        url("manifest_add"),
        {**form, "name": "new-stack", "content": json.dumps(manifest_content())},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Manifest.objects.get(name="new-stack").latest_version.version == 1


# ------------------------------------------------------------------------------ tasks, alerts


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?attention=push_failing",
        "?attention=busy",
        "?attention=ended_badly",
        "?status__exact=running",
        "?q=agent-1",
    ],
)
def test_agent_task_changelist(console, scene, query):
    text = page(console, url("agenttask_changelist"), query)
    assert scene["token"] not in text
    if query in ("", "?status__exact=running"):
        assert scene["task"].public_id in text


def test_agent_task_page(console, scene):
    text = page(console, url("agenttask_change", scene["task"].pk))
    assert "sdxl &lt;b&gt;40%&lt;/b&gt;" in text  # events inline, escaped
    assert "pushed" in text
    assert scene["token"] not in text
    assert console.get(url("agenttask_add")).status_code == 403


def test_agent_task_push_now(console, agent, agent_server):
    agent_update(agent=agent, base_url=agent_server.url)
    agent_server.mode = "busy"
    task = agent_task_create(agent=agent, actions=["restart"])
    assert task.status == "pending"
    agent_server.mode = "accept"
    action(console, url("agenttask_changelist"), "push_now", [task.pk])
    task.refresh_from_db()
    assert task.status == "running"
    assert task.push_attempts == 2


@pytest.mark.parametrize(
    "query", ["", "?acknowledged=no", "?acknowledged=yes", "?severity__exact=critical", "?q=disk"]
)
def test_alert_changelist(console, scene, query):
    text = page(console, url("alert_changelist"), query)
    if query in ("", "?q=disk", "?acknowledged=no"):
        assert "disk_low" in text


def test_alert_page_and_acknowledge(console, scene, staff):
    alert = Alert.objects.get(type="disk_low")
    text = page(console, url("alert_change", alert.pk))
    assert "12 GB &lt;i&gt;left&lt;/i&gt;" in text
    action(
        console,
        url("alert_changelist"),
        "acknowledge",
        list(Alert.objects.values_list("pk", flat=True)),
    )
    assert not Alert.objects.filter(acknowledged_at__isnull=True).exists()
    assert set(Alert.objects.values_list("acknowledged_by", flat=True)) == {staff.pk}


# ------------------------------------------------------------------------------ query counts


def _queries(console, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert console.get(path).status_code == 200
    return len(captured)


def _more_rows(n: int, manifest) -> None:
    for i in range(n):
        executor = executor_create(
            name=f"gpu-x{i}", kind="comfyui", base_url=f"http://10.1.0.{i}:1"
        )
        agent = Agent.objects.create(name=f"agent-x{i}", executor=executor, base_url="http://a:1")
        agent_heartbeat(agent=agent, cpu=1)
        task = agent_task_create(
            agent=agent, actions=["sync_models"], manifest=manifest, push=False
        )
        agent_task_report(task=task, progress=10)
        alert_raise(agent=agent, type="disk_low")

        manifest_create(name=f"stack-{i}", content=manifest_content())


@pytest.mark.parametrize(
    "name", ["agent_changelist", "manifest_changelist", "agenttask_changelist", "alert_changelist"]
)
def test_changelist_queries_do_not_grow_with_rows(console, scene, manifest, name):
    few = _queries(console, url(name))
    _more_rows(4, manifest)
    assert _queries(console, url(name)) == few


@pytest.mark.parametrize(
    "path", ["/api/admin/agents", "/api/admin/manifests", "/api/admin/agents/{agent}/tasks"]
)
def test_api_list_queries_do_not_grow_with_rows(staff_client, scene, agent, manifest, path):
    path = path.format(agent=agent.pk)
    with CaptureQueriesContext(connection) as few:
        assert staff_client.get(path).status_code == 200
    _more_rows(4, manifest)
    for _ in range(3):
        agent_task_create(agent=agent, actions=["restart"], push=False)
    with CaptureQueriesContext(connection) as many:
        assert staff_client.get(path).status_code == 200
    assert len(many) == len(few)
