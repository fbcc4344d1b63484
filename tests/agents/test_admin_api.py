"""Admin API for agents, manifests and agent tasks (/api/admin/…)."""

from __future__ import annotations

import pytest

from integrations.agents.models import Agent, AgentTask, Alert, Manifest, ManifestVersion
from integrations.agents.services.agent_tasks import agent_task_create
from integrations.agents.services.alerts import alert_raise
from integrations.agents.services.liveness import agent_heartbeat
from integrations.agents.services.tokens import agent_token_mint
from integrations.models import Executor
from integrations.services import executor_create
from tests.conftest import Client

from .conftest import MANIFEST, SHA_B, manifest_content

pytestmark = pytest.mark.django_db

COLLECTIONS = ["/api/admin/agents", "/api/admin/manifests"]


def counts() -> dict:
    return {
        m.__name__: m.objects.count() for m in (Agent, Manifest, ManifestVersion, AgentTask, Alert)
    }


@pytest.mark.parametrize("url", COLLECTIONS)
def test_staff_or_admin_scope_only(url, anon, owner_client, service_key, client_for):
    assert anon.get(url).json()["code"] == "AUTH_REQUIRED"
    assert owner_client.get(url).status_code == 403
    _, raw = service_key(scopes=["tasks:write"])
    assert client_for(raw).get(url).status_code == 403
    _, admin_raw = service_key(scopes=["admin"], name="ops")
    assert client_for(admin_raw).get(url).status_code == 200


def test_plain_users_cannot_touch_agents(owner_client, agent, manifest):
    before = counts()
    for path, body in (
        ("/api/admin/agents", {"name": "x", "executor": agent.executor_id, "baseUrl": "http://a"}),
        (f"/api/admin/agents/{agent.pk}/token", {}),
        (f"/api/admin/agents/{agent.pk}/revoke-tokens", {}),
        (f"/api/admin/agents/{agent.pk}/tasks", {"actions": ["restart"]}),
        ("/api/admin/manifests", {"name": "m", **MANIFEST}),
    ):
        assert owner_client.post(path, body).status_code == 403, path
    assert counts() == before
    agent.refresh_from_db()
    assert agent.token_version == 1 and agent.token_issued_at is None


def test_agent_crud(staff_client):
    executor = executor_create(name="gpu-1", kind="comfyui", base_url="http://127.0.0.1:1")
    response = staff_client.post(
        "/api/admin/agents",
        {"name": "agent-1", "executor": executor.pk, "baseUrl": "http://10.0.0.5:9000/"},
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body == {
        "id": body["id"],
        "name": "agent-1",
        "executor": executor.pk,
        "baseUrl": "http://10.0.0.5:9000",
        "enabled": True,
        "description": "",
        "status": "unknown",
        "statusChangedAt": None,
        "lastHeartbeatAt": None,
        "reportedStatus": "",
        "agentVersion": "",
        "comfyuiVersion": "",
        "metrics": {},
        "manifest": None,
        "token": {"version": 1, "kid": "", "issuedAt": None, "expiresAt": None, "revokedAt": None},
        "createdAt": body["createdAt"],
        "updatedAt": body["updatedAt"],
    }
    agent_id = body["id"]
    assert staff_client.get("/api/admin/agents?status=unknown").json()["total"] == 1
    assert staff_client.get("/api/admin/agents?status=online").json()["total"] == 0
    assert staff_client.get(f"/api/admin/agents?executor={executor.pk}").json()["total"] == 1
    patched = staff_client.patch(
        f"/api/admin/agents/{agent_id}", {"enabled": False, "description": "rack 3"}
    )
    assert patched.status_code == 200
    assert (patched.json()["enabled"], patched.json()["description"]) == (False, "rack 3")
    # The executor is still in use by the agent: 409.
    response = staff_client.delete(f"/api/admin/executors/{executor.pk}")
    assert (response.status_code, response.json()["code"]) == (409, "RESOURCE_IN_USE")
    assert staff_client.delete(f"/api/admin/agents/{agent_id}").status_code == 204
    response = staff_client.get(f"/api/admin/agents/{agent_id}")
    assert (response.status_code, response.json()["code"]) == (404, "AGENT_NOT_FOUND")
    assert staff_client.delete(f"/api/admin/executors/{executor.pk}").status_code == 204


def test_agent_validation(staff_client, agent):
    coze = executor_create(
        name="coze", kind="coze", base_url="https://api.coze.cn", config={"health_probe": False}
    )
    before = counts()
    cases = [
        ({"name": "x", "executor": coze.pk, "baseUrl": "http://a"}, 400, "executor"),
        ({"name": "x", "executor": agent.executor_id, "baseUrl": "http://a"}, 400, "executor"),
        ({"name": "agent-1", "executor": coze.pk, "baseUrl": "http://a"}, 400, "name"),
        ({"name": "x", "executor": 99999, "baseUrl": "http://a"}, 404, None),
    ]
    free = executor_create(name="gpu-free", kind="comfyui", base_url="http://127.0.0.1:3")
    cases.append(
        ({"name": "x", "executor": free.pk, "baseUrl": "javascript:alert(1)"}, 400, "baseUrl")
    )
    for body, status, field in cases:
        response = staff_client.post("/api/admin/agents", body)
        assert response.status_code == status, (body, response.json())
        if field:
            assert field in response.json()["details"]["fields"], response.json()
    assert counts() == before


def test_token_is_shown_once_and_never_read_back(staff_client, agent):
    response = staff_client.post(f"/api/admin/agents/{agent.pk}/token", {})
    assert response.status_code == 201, response.json()
    assert response["Cache-Control"] == "no-store"
    minted = response.json()
    token = minted["token"]
    assert minted == {
        "agentId": agent.pk,
        "token": token,
        "tokenType": "Bearer",
        "scope": "agent",
        "kid": "k1",
        "issuedAt": minted["issuedAt"],
        "expiresAt": minted["expiresAt"],
        "expiresIn": 86400,
    }
    # It works for the agent…
    assert Client(token).post(f"/api/agent/v1/agents/{agent.pk}/heartbeat", {}).status_code == 200
    # …and no admin read returns it.
    for path in (
        f"/api/admin/agents/{agent.pk}",
        "/api/admin/agents",
        f"/api/admin/agents/{agent.pk}/tasks",
        f"/api/admin/agents/{agent.pk}/alerts",
    ):
        text = staff_client.get(path).content.decode()
        assert token not in text and token.split(".")[2] not in text
    info = staff_client.get(f"/api/admin/agents/{agent.pk}").json()["token"]
    assert info["kid"] == "k1" and info["issuedAt"] == minted["issuedAt"]
    assert staff_client.post("/api/admin/agents/99999/token", {}).status_code == 404


def test_push_sync_task_through_the_api(staff_client, agent, manifest, agent_server):
    agent.base_url = agent_server.url
    agent.save()
    response = staff_client.post(
        f"/api/admin/agents/{agent.pk}/tasks",
        {"actions": ["sync_models", "restart", "sync_models"], "manifest": manifest.pk},
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "running"
    assert body["actions"] == ["sync_models", "restart"]
    assert body["manifest"] == {"id": manifest.pk, "name": "sdxl-stack", "version": 1}
    assert body["pushAttempts"] == 1
    assert body["error"] is None
    assert [(e["source"], e["type"]) for e in body["events"]] == [
        ("podi", "created"),
        ("podi", "pushed"),
    ]
    # The pushed task token never shows in admin reads.
    pushed_token = agent_server.pushes[0]["token"]
    listing = staff_client.get(f"/api/admin/agents/{agent.pk}/tasks").content.decode()
    detail = staff_client.get(f"/api/admin/agents/{agent.pk}/tasks/{body['id']}")
    assert detail.status_code == 200
    assert pushed_token not in listing and pushed_token not in detail.content.decode()
    assert detail.json()["events"] == body["events"]
    assert (
        staff_client.get(f"/api/admin/agents/{agent.pk}/tasks?status=running").json()["total"] == 1
    )
    response = staff_client.get(f"/api/admin/agents/{agent.pk}/tasks/atk_nope")
    assert response.json()["code"] == "AGENT_TASK_NOT_FOUND"


def test_push_refusals_create_nothing(staff_client, agent, other_agent, manifest):
    before = counts()
    for body, status, code in (
        ({"actions": []}, 400, "VALIDATION_ERROR"),
        ({"actions": ["format_disk"]}, 400, "VALIDATION_ERROR"),
        ({"actions": ["sync_models"]}, 400, "VALIDATION_ERROR"),
        ({"actions": ["sync_models"], "manifest": 99999}, 404, "MANIFEST_NOT_FOUND"),
        (
            {"actions": ["sync_models"], "manifest": manifest.pk, "manifestVersion": 7},
            400,
            "VALIDATION_ERROR",
        ),
        ({"actions": ["restart"], "ttlSeconds": 5}, 400, "VALIDATION_ERROR"),
    ):
        response = staff_client.post(f"/api/admin/agents/{agent.pk}/tasks", body)
        assert (response.status_code, response.json()["code"]) == (status, code), body
    other_agent.enabled = False
    other_agent.save()
    response = staff_client.post(
        f"/api/admin/agents/{other_agent.pk}/tasks", {"actions": ["restart"]}
    )
    assert (response.status_code, response.json()["code"]) == (409, "AGENT_DISABLED")
    assert counts() == before


def test_manifest_crud_and_versions(staff_client, agent):
    response = staff_client.post(
        "/api/admin/manifests", {"name": "sdxl", "description": "base stack", **MANIFEST}
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    manifest_id = body["id"]
    assert body["version"] == 1
    assert body["models"] == MANIFEST["models"]
    assert body["comfyui"] == MANIFEST["comfyui"]
    # PATCH with a changed section makes version 2; the other sections are kept.
    models = [dict(MANIFEST["models"][0], sha256=SHA_B)]
    patched = staff_client.patch(
        f"/api/admin/manifests/{manifest_id}", {"models": models, "changelog": "rebuilt"}
    )
    assert patched.status_code == 200, patched.json()
    assert patched.json()["version"] == 2
    assert patched.json()["plugins"] == MANIFEST["plugins"]
    assert patched.json()["changelog"] == "rebuilt"
    # The same content again, or a rename, makes no version.
    staff_client.patch(f"/api/admin/manifests/{manifest_id}", {"models": models, "name": "sdxl-2"})
    versions = staff_client.get(f"/api/admin/manifests/{manifest_id}/versions").json()
    assert [v["version"] for v in versions["items"]] == [2, 1]
    assert staff_client.get(f"/api/admin/manifests/{manifest_id}").json()["name"] == "sdxl-2"
    # In use by a task: 409; unknown: 404.
    agent_task_create(
        agent=agent, actions=["sync_models"], manifest=Manifest.objects.get(), push=False
    )
    response = staff_client.delete(f"/api/admin/manifests/{manifest_id}")
    assert (response.status_code, response.json()["code"]) == (409, "RESOURCE_IN_USE")
    assert staff_client.get("/api/admin/manifests/99999").json()["code"] == "MANIFEST_NOT_FOUND"


def test_invalid_manifests_name_their_fields(staff_client):
    content = manifest_content()
    del content["models"][0]["sha256"]
    content["models"][0]["url"] = "ftp://x/y"
    content["workflows"][0]["destPath"] = "../../../root/.ssh/authorized_keys"
    response = staff_client.post("/api/admin/manifests", {"name": "bad", **content})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["details"]["fields"] == {
        "workflows[0].destPath": [
            "No '..', '.' or empty path segments (it must stay inside ComfyUI)."
        ],
        "models[0].url": ["Must be an http(s) URL with a host."],
        "models[0].sha256": ["Required: the file's SHA-256 (64 hex digits)."],
    }
    assert body["message"].startswith("The manifest is not valid (3 problems)")
    assert Manifest.objects.count() == 0


def test_alerts_list(staff_client, agent):
    agent_heartbeat(agent=agent)
    agent_token_mint(agent=agent)

    alert_raise(agent=agent, type="disk_low", message="low")
    alert_raise(agent=agent, type="gpu_error", severity="critical")
    body = staff_client.get(f"/api/admin/agents/{agent.pk}/alerts").json()
    assert [a["type"] for a in body["items"]] == ["gpu_error", "disk_low"]
    assert (
        staff_client.get(f"/api/admin/agents/{agent.pk}/alerts?type=disk_low").json()["total"] == 1
    )
    assert (
        staff_client.get(f"/api/admin/agents/{agent.pk}/alerts?acknowledged=true").json()["total"]
        == 0
    )
    assert Executor.objects.get(pk=agent.executor_id).health_status == "healthy"
