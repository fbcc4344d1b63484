"""The agent's side of a sync task: manifest, events, complete, failed; expiry by the
reconciler."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.agents.actors import agent_tasks_expiry
from integrations.agents.models import Agent, AgentTask
from integrations.agents.services.agent_task_reports import agent_task_report, agent_tasks_expire
from integrations.agents.services.agent_tasks import agent_task_create, agent_tasks_claim_pushes
from integrations.agents.services.manifests import manifest_create, manifest_update
from integrations.agents.services.tokens import agent_task_token
from podi.reconcile import registered_steps
from tests.conftest import Client

from .conftest import MANIFEST, SHA_A, manifest_content

pytestmark = pytest.mark.django_db


@pytest.fixture
def task(agent, manifest):
    return agent_task_create(
        agent=agent, actions=["sync_models", "sync_workflows"], manifest=manifest, push=False
    )


@pytest.fixture
def client(task) -> Client:
    return Client(agent_task_token(task=task).token)


def url(task, route: str) -> str:
    return f"/api/agent/v1/tasks/{task.public_id}/{route}"


def test_manifest_is_the_version_pinned_by_the_task(task, client, manifest):
    content = manifest_content()
    content["models"][0]["sha256"] = "c" * 64
    manifest_update(manifest=manifest, content=content, changelog="new SDXL build")
    manifest.refresh_from_db()
    assert manifest.latest_version.version == 2
    response = client.get(f"/api/agent/v1/manifests/{manifest.pk}")
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "id": manifest.pk,
        "name": "sdxl-stack",
        "version": 1,
        "comfyui": {"repo": MANIFEST["comfyui"]["repo"], "commit": "0123456789abcdef"},
        "plugins": MANIFEST["plugins"],
        "workflows": MANIFEST["workflows"],
        "models": [{**MANIFEST["models"][0], "sha256": SHA_A}],
    }


def test_manifest_of_another_task_is_forbidden(agent, task, client):
    other = manifest_create(name="other", content=manifest_content())
    response = client.get(f"/api/agent/v1/manifests/{other.pk}")
    assert (response.status_code, response.json()["code"]) == (403, "AGENT_TASK_FORBIDDEN")
    restart = agent_task_create(agent=agent, actions=["restart"], push=False)
    response = Client(agent_task_token(task=restart).token).get(
        f"/api/agent/v1/manifests/{other.pk}"
    )
    assert response.json()["code"] == "AGENT_TASK_FORBIDDEN"


def test_events_then_complete(task, client, agent):
    response = client.post(
        url(task, "events"),
        {"type": "download", "message": "sdxl 40%", "progress": 40, "payload": {"file": "sdxl"}},
    )
    assert response.status_code == 201, response.json()
    assert response.json() == {
        "taskId": task.public_id,
        "status": "running",
        "progress": 40,
        "expiresAt": task.expires_at.isoformat().replace("+00:00", "Z"),
        "finishedAt": None,
    }
    task.refresh_from_db()
    assert task.started_at is not None and task.next_push_at is None
    # A running task is no longer pushed.
    assert agent_tasks_claim_pushes(now=timezone.now() + timedelta(minutes=5)) == []
    response = client.post(url(task, "complete"), {"result": {"downloaded": 1}, "message": "ok"})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["progress"] == 100
    task.refresh_from_db()
    assert task.result == {"downloaded": 1}
    assert list(task.events.values_list("source", "type", "progress")) == [
        ("podi", "created", None),
        ("agent", "download", 40),
        ("agent", "succeeded", 100),
    ]
    agent.refresh_from_db()
    assert agent.manifest_version_id == task.manifest_version_id
    # Repeating is a no-op; another ending, or more events, is a conflict.
    again = client.post(url(task, "complete"), {"result": {"downloaded": 99}})
    assert again.status_code == 200
    task.refresh_from_db()
    assert task.result == {"downloaded": 1}
    for route in ("failed", "events"):
        response = client.post(url(task, route), {})
        assert (response.status_code, response.json()["code"]) == (409, "AGENT_TASK_FINISHED")
    assert task.events.count() == 3


def test_failed(task, client, agent):
    response = client.post(
        url(task, "failed"),
        {"error": {"code": "SHA_MISMATCH", "message": "sdxl: checksum differs"}, "payload": {}},
    )
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "failed"
    task.refresh_from_db()
    assert (task.error_code, task.error_message) == ("SHA_MISMATCH", "sdxl: checksum differs")
    assert client.post(url(task, "failed"), {"message": "again"}).status_code == 200
    response = client.post(url(task, "complete"), {})
    assert response.json()["code"] == "AGENT_TASK_FINISHED"
    agent.refresh_from_db()
    assert agent.manifest_version_id is None


def test_bad_report_bodies_change_nothing(task, client):
    for route, body in (
        ("events", {"progress": 101}),
        ("events", {"type": "has space"}),
        ("events", {"payload": "text"}),
        ("failed", {"error": {"code": "bad code!"}}),
    ):
        response = client.post(url(task, route), body)
        assert response.status_code == 400, (route, body)
        assert response.json()["code"] == "VALIDATION_ERROR"
    task.refresh_from_db()
    assert task.status == AgentTask.Status.PENDING
    assert task.events.count() == 1


def test_expired_task_is_gone_for_the_agent(agent):
    past = timezone.now() - timedelta(minutes=30)
    task = agent_task_create(
        agent=agent, actions=["restart"], ttl_seconds=3600, push=False, now=past
    )
    token = agent_task_token(task=task).token
    AgentTask.objects.filter(pk=task.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = Client(token).post(url(task, "events"), {"message": "late"})
    assert (response.status_code, response.json()["code"]) == (410, "AGENT_TASK_EXPIRED")
    task.refresh_from_db()
    assert task.status == AgentTask.Status.PENDING and task.events.count() == 1


def test_reconciler_expires_pending_and_running_tasks(agent, manifest):
    t0 = timezone.now()
    pending = agent_task_create(
        agent=agent, actions=["restart"], ttl_seconds=600, push=False, now=t0
    )
    running = agent_task_create(
        agent=agent, actions=["sync_models"], manifest=manifest, ttl_seconds=900, push=False, now=t0
    )
    agent_task_report(task=running, message="started", now=t0)
    done = agent_task_create(agent=agent, actions=["restart"], ttl_seconds=600, push=False, now=t0)
    AgentTask.objects.filter(pk=done.pk).update(status="succeeded", finished_at=t0)

    assert agent_tasks_expire(now=t0 + timedelta(seconds=599)) == 0
    assert agent_tasks_expire(now=t0 + timedelta(seconds=600)) == 1
    pending.refresh_from_db()
    assert pending.status == AgentTask.Status.EXPIRED
    assert pending.error_code == "AGENT_TASK_EXPIRED"
    assert pending.finished_at == t0 + timedelta(seconds=600)
    assert pending.next_push_at is None
    assert pending.events.last().type == "expired"
    assert agent_tasks_expire(now=t0 + timedelta(seconds=900)) == 1
    running.refresh_from_db()
    assert running.status == AgentTask.Status.EXPIRED
    assert "while running" in running.error_message
    assert agent_tasks_expire(now=t0 + timedelta(days=1)) == 0
    done.refresh_from_db()
    assert done.status == AgentTask.Status.SUCCEEDED
    assert Agent.objects.get(pk=agent.pk).manifest_version_id is None


def test_expiry_step_is_registered(agent):
    assert "integrations.agents.actors.agent_tasks_expiry" in registered_steps()
    past = timezone.now() - timedelta(hours=2)
    agent_task_create(agent=agent, actions=["restart"], ttl_seconds=60, push=False, now=past)
    assert agent_tasks_expiry() == 1
    assert AgentTask.objects.get().status == "expired"


def test_oversized_reports_are_refused(task, client, agent, agent_client):
    big = {"log": "x" * 40_000}
    for route, body in (
        ("events", {"payload": big}),
        ("complete", {"result": big}),
        ("failed", {"payload": big}),
    ):
        response = client.post(url(task, route), body)
        assert response.status_code == 400, route
        assert "At most 32 KB of JSON." in str(response.json()["details"]["fields"])
    task.refresh_from_db()
    assert task.status == AgentTask.Status.PENDING and task.events.count() == 1
    response = agent_client.post(f"/api/agent/v1/agents/{agent.pk}/heartbeat", {"metrics": big})
    assert response.status_code == 400
    response = agent_client.post(
        f"/api/agent/v1/agents/{agent.pk}/alerts", {"type": "x", "payload": big}
    )
    assert response.status_code == 400
    agent.refresh_from_db()
    assert agent.last_heartbeat_at is None and agent.alerts.count() == 0
