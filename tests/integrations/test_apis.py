"""Admin API (/api/admin/…) and the public catalog (/api/abilities)."""

from __future__ import annotations

import json

import pytest

from integrations.models import (
    Ability,
    Executor,
    Preset,
    VendorApiKey,
    Workflow,
    WorkflowBinding,
    WorkflowVersion,
)
from integrations.services import (
    ability_create,
    api_key_create,
    binding_create,
    executor_create,
    preset_create,
    workflow_create,
    workflow_version_create,
)
from integrations.validation import executor_headers

from .conftest import graph, schema

pytestmark = pytest.mark.django_db

SECRET = "pat_THIS-IS-THE-SECRET-VALUE_a1b2"

ADMIN_COLLECTIONS = [
    "/api/admin/executors",
    "/api/admin/workflows",
    "/api/admin/abilities",
    "/api/admin/workflow-bindings",
    "/api/admin/api-keys",
    "/api/admin/presets",
]


def counts() -> dict:
    return {
        m.__name__: m.objects.count()
        for m in (
            Executor,
            Workflow,
            WorkflowVersion,
            Ability,
            WorkflowBinding,
            VendorApiKey,
            Preset,
        )
    }


# ------------------------------------------------------------------------------ auth


@pytest.mark.parametrize("url", ADMIN_COLLECTIONS)
def test_admin_api_requires_staff_or_admin_scope(url, anon, owner_client, service_key, client_for):
    assert anon.get(url).status_code == 401
    assert anon.get(url).json()["code"] == "AUTH_REQUIRED"
    response = owner_client.get(url)
    assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN")
    _, raw = service_key(scopes=["tasks:write", "wallet:write"])
    assert client_for(raw).get(url).status_code == 403
    _, admin_raw = service_key(scopes=["admin"], name="ops")
    assert client_for(admin_raw).get(url).status_code == 200


def test_plain_users_cannot_write(owner_client):
    before = counts()
    response = owner_client.post(
        "/api/admin/executors", {"name": "x", "kind": "comfyui", "baseUrl": "http://127.0.0.1:1"}
    )
    assert response.status_code == 403
    response = owner_client.post(
        "/api/admin/api-keys", {"provider": "coze", "name": "k", "secret": SECRET}
    )
    assert response.status_code == 403
    assert counts() == before


# ------------------------------------------------------------------------------ executors


def test_executor_crud(staff_client):
    key = api_key_create(provider="coze", name="k", secret=SECRET)
    response = staff_client.post(
        "/api/admin/executors",
        {
            "name": "gpu-1",
            "kind": "comfyui",
            "baseUrl": "http://127.0.0.1:8188/",
            "maxConcurrency": 3,
            "weight": 2,
            "config": {
                "read_timeout": 5,
                "headers": {"X-Env": "a", "Authorization": "Bearer zzzzzzzz-secret-zzzz"},
            },
            "apiKeyIds": [key.pk],
        },
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    executor_id = body["id"]
    assert body == {
        "id": executor_id,
        "name": "gpu-1",
        "kind": "comfyui",
        "baseUrl": "http://127.0.0.1:8188",
        "enabled": True,
        "maxConcurrency": 3,
        "weight": 2,
        "config": {"read_timeout": 5, "headers": {"X-Env": "…", "Authorization": "Bear…zzzz"}},
        "apiKeyIds": [key.pk],
        "health": {"status": "unknown", "checkedAt": None, "lastError": "", "details": {}},
        "createdAt": body["createdAt"],
        "updatedAt": body["updatedAt"],
    }
    listed = staff_client.get("/api/admin/executors?kind=comfyui&enabled=true").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == executor_id
    assert staff_client.get("/api/admin/executors?kind=coze").json()["total"] == 0
    assert staff_client.get("/api/admin/executors?health=unhealthy").json()["total"] == 0

    # Sending the masked header back keeps the stored secret.
    patched = staff_client.patch(
        f"/api/admin/executors/{executor_id}",
        {"enabled": False, "config": body["config"] | {"connect_timeout": 2}, "apiKeyIds": []},
    )
    assert patched.status_code == 200, patched.json()
    assert patched.json()["enabled"] is False
    assert patched.json()["apiKeyIds"] == []
    stored = Executor.objects.get(pk=executor_id)
    assert executor_headers(stored.config) == {
        "X-Env": "a",
        "Authorization": "Bearer zzzzzzzz-secret-zzzz",
    }
    assert "zzzzzzzz-secret" not in json.dumps(stored.config)  # encrypted at rest
    assert set(stored.config) == {"read_timeout", "connect_timeout", "headers_encrypted"}
    assert stored.config["connect_timeout"] == 2

    assert staff_client.get(f"/api/admin/executors/{executor_id}").json()["enabled"] is False
    assert staff_client.delete(f"/api/admin/executors/{executor_id}").status_code == 204
    assert not Executor.objects.filter(pk=executor_id).exists()


def test_executor_errors(staff_client, binding, comfy_executor):
    before = counts()
    missing = staff_client.get("/api/admin/executors/999999")
    assert (missing.status_code, missing.json()["code"]) == (404, "EXECUTOR_NOT_FOUND")
    assert staff_client.patch("/api/admin/executors/999999", {"weight": 1}).status_code == 404
    assert staff_client.delete("/api/admin/executors/999999").status_code == 404
    assert staff_client.post("/api/admin/executors/999999/check").status_code == 404
    bad = staff_client.post(
        "/api/admin/executors",
        {"name": "x", "kind": "comfyui", "baseUrl": "http://h", "config": {"mode": "sync"}},
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "VALIDATION_ERROR")
    assert bad.json()["details"]["fields"] == {"config.mode": ["Unknown setting."]}
    bad = staff_client.post(
        "/api/admin/executors",
        {"name": "x", "kind": "gpu", "baseUrl": "http://h", "maxConcurrency": 0},
    )
    assert set(bad.json()["details"]["fields"]) == {"kind", "maxConcurrency"}
    bad = staff_client.post(
        "/api/admin/executors", {"name": "x", "kind": "coze", "baseUrl": "h", "apiKeyIds": [999]}
    )
    assert (bad.status_code, bad.json()["code"]) == (404, "API_KEY_NOT_FOUND")
    in_use = staff_client.delete(f"/api/admin/executors/{comfy_executor.pk}")
    assert (in_use.status_code, in_use.json()["code"]) == (409, "RESOURCE_IN_USE")
    assert counts() == before


def test_executor_check_endpoint_records_health(staff_client, comfy_executor):
    # Port 1 on loopback refuses connections: unhealthy with a readable reason, never a 500.
    response = staff_client.post(f"/api/admin/executors/{comfy_executor.pk}/check")
    assert response.status_code == 200
    health = response.json()["health"]
    assert health["status"] == "unhealthy"
    assert "Cannot connect" in health["lastError"]
    assert health["checkedAt"].endswith("Z")


# ------------------------------------------------------------------------------ workflows


def test_workflow_and_versions(staff_client):
    created = staff_client.post(
        "/api/admin/workflows", {"name": "invert", "kind": "comfyui", "description": "d"}
    )
    assert created.status_code == 201
    workflow_id = created.json()["id"]
    assert created.json()["activeVersion"] is None
    url = f"/api/admin/workflows/{workflow_id}/versions"
    v1 = staff_client.post(
        url, {"definition": graph(), "paramsSchema": schema(), "changelog": "first"}
    )
    assert v1.status_code == 201, v1.json()
    assert v1.json() == {
        "version": 1,
        "definition": graph(),
        "paramsSchema": schema(),
        "outputs": [],
        "changelog": "first",
        "createdAt": v1.json()["createdAt"],
        "warnings": [],
    }
    v2 = staff_client.post(
        url, {"definition": json.dumps(graph()), "paramsSchema": schema(), "activate": False}
    )
    assert v2.json()["version"] == 2
    assert staff_client.get(f"/api/admin/workflows/{workflow_id}").json()["activeVersion"] == 1
    listed = staff_client.get(url).json()
    assert [v["version"] for v in listed["items"]] == [2, 1]
    patched = staff_client.patch(f"/api/admin/workflows/{workflow_id}", {"activeVersion": 2})
    assert patched.json()["activeVersion"] == 2
    missing = staff_client.patch(f"/api/admin/workflows/{workflow_id}", {"activeVersion": 9})
    assert (missing.status_code, missing.json()["code"]) == (404, "WORKFLOW_VERSION_NOT_FOUND")
    assert staff_client.delete(f"/api/admin/workflows/{workflow_id}").status_code == 204
    assert not WorkflowVersion.objects.exists()


def test_workflow_version_errors(staff_client, comfy_workflow, binding):
    url = f"/api/admin/workflows/{comfy_workflow.pk}/versions"
    before = counts()
    ui = staff_client.post(url, {"definition": {"nodes": [], "links": []}, "paramsSchema": {}})
    assert (ui.status_code, ui.json()["code"]) == (400, "WORKFLOW_INVALID")
    assert ui.json()["details"]["reason"] == "ui_format"
    assert "Export (API)" in ui.json()["message"]
    not_json = staff_client.post(url, {"definition": "{nope", "paramsSchema": {}})
    assert not_json.json()["details"]["reason"] == "not_json"
    undeclared = graph()
    undeclared["1"]["inputs"]["color"] = "{{colour}}"
    response = staff_client.post(url, {"definition": undeclared, "paramsSchema": schema()})
    assert response.json()["details"]["reason"] == "undeclared_placeholder"
    missing = staff_client.post(
        "/api/admin/workflows/999/versions", {"definition": {}, "paramsSchema": {}}
    )
    assert (missing.status_code, missing.json()["code"]) == (404, "WORKFLOW_NOT_FOUND")
    assert staff_client.get("/api/admin/workflows/999").json()["code"] == "WORKFLOW_NOT_FOUND"
    in_use = staff_client.delete(f"/api/admin/workflows/{comfy_workflow.pk}")
    assert (in_use.status_code, in_use.json()["code"]) == (409, "RESOURCE_IN_USE")
    dup = staff_client.post("/api/admin/workflows", {"name": "invert", "kind": "comfyui"})
    assert dup.json()["details"]["fields"] == {"name": ["'invert' is already taken."]}
    assert counts() == before


# ------------------------------------------------------------------------------ abilities


def test_ability_crud_and_schema_is_read_only(staff_client, comfy_workflow, comfy_executor):
    created = staff_client.post(
        "/api/admin/abilities",
        {
            "code": "invert",
            "displayName": "Invert",
            "points": 5,
            "category": "image",
            "paramsSchema": {"type": "object", "properties": {"forged": {}}},
        },
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    ability_id = body["id"]
    assert body == {
        "id": ability_id,
        "code": "invert",
        "displayName": "Invert",
        "description": "",
        "category": "image",
        "provider": "",
        "points": 5,
        "defaults": {},
        "status": "active",
        "requiresImage": False,
        "maxOutputs": 1,
        "paramsSchema": {"type": "object", "properties": {}},
        "createdAt": body["createdAt"],
        "updatedAt": body["updatedAt"],
    }
    assert Preset.objects.get(ability_id=ability_id).is_base
    bound = staff_client.post(
        "/api/admin/workflow-bindings",
        {"ability": ability_id, "workflow": comfy_workflow.pk, "executor": comfy_executor.pk},
    )
    assert bound.status_code == 201
    assert staff_client.get(f"/api/admin/abilities/{ability_id}").json()["paramsSchema"] == schema()
    patched = staff_client.patch(
        f"/api/admin/abilities/{ability_id}", {"points": 7, "defaults": {"width": 32}}
    )
    assert patched.json()["points"] == 7
    bad = staff_client.patch(f"/api/admin/abilities/{ability_id}", {"defaults": {"width": "x"}})
    assert bad.json()["details"]["fields"] == {"defaults.width": ["'x' is not of type 'integer'"]}
    assert Ability.objects.get(pk=ability_id).defaults == {"width": 32}
    in_use = staff_client.delete(f"/api/admin/abilities/{ability_id}")
    assert (in_use.status_code, in_use.json()["code"]) == (409, "RESOURCE_IN_USE")
    assert staff_client.get("/api/admin/abilities/999").json()["code"] == "ABILITY_NOT_FOUND"
    bad_code = staff_client.post("/api/admin/abilities", {"code": "has space", "displayName": "x"})
    assert bad_code.json()["code"] == "VALIDATION_ERROR"


# ------------------------------------------------------------------------------ bindings


def test_binding_crud_and_errors(staff_client, ability, comfy_workflow, comfy_executor):
    url = "/api/admin/workflow-bindings"
    payload = {"ability": ability.pk, "workflow": comfy_workflow.pk, "executor": comfy_executor.pk}
    created = staff_client.post(url, payload | {"priority": 5, "workflowVersion": 1})
    assert created.status_code == 201, created.json()
    body = created.json()
    binding_id = body["id"]
    assert body == {
        "id": binding_id,
        "ability": ability.pk,
        "workflow": comfy_workflow.pk,
        "workflowVersion": 1,
        "executor": comfy_executor.pk,
        "priority": 5,
        "weight": 1,
        "enabled": True,
        "missingNodeClasses": [],
        "nodesCheckedAt": None,
        "maxAttempts": 3,
        "queueTimeout": 600,
        "runTimeout": 600,
        "createdAt": body["createdAt"],
        "updatedAt": body["updatedAt"],
        "warnings": [
            f"{ability.code} → {comfy_workflow.name} @ {comfy_executor.name}: "
            f"{comfy_executor.name}'s node classes are not known yet; they are checked at its "
            "next health check."
        ],
    }
    patched = staff_client.patch(f"{url}/{binding_id}", {"workflowVersion": None, "runTimeout": 30})
    assert patched.json()["workflowVersion"] is None and patched.json()["runTimeout"] == 30
    assert staff_client.get(f"{url}?ability={ability.pk}").json()["total"] == 1

    before = counts()
    coze = executor_create(name="coze", kind="coze", base_url="https://api.coze.cn")
    before = counts()
    mismatch = staff_client.post(url, payload | {"executor": coze.pk})
    assert (mismatch.status_code, mismatch.json()["code"]) == (400, "INVALID_WORKFLOW_OR_EXECUTOR")
    other = workflow_create(name="other", kind="comfyui")
    workflow_version_create(workflow=other, definition=graph(), params_schema=schema())
    workflow_version_create(workflow=other, definition=graph(), params_schema=schema())
    before = counts()
    pinned = staff_client.post(url, payload | {"workflowVersion": 2})
    assert (pinned.status_code, pinned.json()["code"]) == (400, "INVALID_WORKFLOW_OR_EXECUTOR")
    for field, code in (
        ("ability", "ABILITY_NOT_FOUND"),
        ("workflow", "WORKFLOW_NOT_FOUND"),
        ("executor", "EXECUTOR_NOT_FOUND"),
    ):
        response = staff_client.post(url, payload | {field: 99999})
        assert (response.status_code, response.json()["code"]) == (404, code)
    assert counts() == before
    assert staff_client.get(f"{url}/99999").json()["code"] == "BINDING_NOT_FOUND"
    assert staff_client.delete(f"{url}/{binding_id}").status_code == 204
    assert staff_client.delete(f"{url}/{binding_id}").json()["code"] == "BINDING_NOT_FOUND"


# ------------------------------------------------------------------------------ api keys


def test_api_key_secret_is_write_only_everywhere(staff_client, comfy_executor):
    created = staff_client.post(
        "/api/admin/api-keys",
        {"provider": "coze", "name": "main", "secret": SECRET, "dailyQuota": 100, "priority": 3},
    )
    assert created.status_code == 201
    body = created.json()
    key_id = body["id"]
    assert body == {
        "id": key_id,
        "provider": "coze",
        "name": "main",
        "masked": "pat_…a1b2",
        "status": "active",
        "priority": 3,
        "dailyQuota": 100,
        "usedToday": 0,
        "expiresAt": None,
        "lastUsedAt": None,
        "createdAt": body["createdAt"],
    }
    staff_client.patch(f"/api/admin/executors/{comfy_executor.pk}", {"apiKeyIds": [key_id]})
    responses = [
        created,
        staff_client.get("/api/admin/api-keys"),
        staff_client.get(f"/api/admin/api-keys/{key_id}"),
        staff_client.patch(f"/api/admin/api-keys/{key_id}", {"name": "renamed"}),
        staff_client.get("/api/admin/executors"),
        staff_client.get(f"/api/admin/executors/{comfy_executor.pk}"),
        staff_client.get("/api/schema/"),
    ]
    stored = VendorApiKey.objects.get(pk=key_id)
    for response in responses:
        text = response.content.decode()
        assert SECRET not in text
        assert "THIS-IS-THE-SECRET" not in text
        assert stored.secret_encrypted not in text
    rotated = staff_client.patch(
        f"/api/admin/api-keys/{key_id}", {"secret": "sk-rotated-value-7777"}
    )
    assert rotated.json()["masked"] == "sk-r…7777"
    assert VendorApiKey.objects.get(pk=key_id).reveal() == "sk-rotated-value-7777"
    in_use = staff_client.delete(f"/api/admin/api-keys/{key_id}")
    assert (in_use.status_code, in_use.json()["code"]) == (409, "RESOURCE_IN_USE")
    assert staff_client.get("/api/admin/api-keys/999").json()["code"] == "API_KEY_NOT_FOUND"
    no_secret = staff_client.post("/api/admin/api-keys", {"provider": "coze", "name": "n"})
    assert no_secret.json()["details"]["fields"] == {"secret": ["This field is required."]}


# ------------------------------------------------------------------------------ presets


def test_preset_crud(staff_client, ability, binding):
    url = "/api/admin/presets"
    created = staff_client.post(
        url, {"ability": ability.pk, "name": "big", "params": {"width": 512}}
    )
    assert created.status_code == 201, created.json()
    preset_id = created.json()["id"]
    assert created.json()["params"] == {"width": 512} and created.json()["isBase"] is False
    listed = staff_client.get(f"{url}?ability={ability.pk}").json()
    assert [(p["name"], p["isBase"]) for p in listed["items"]] == [("Base", True), ("big", False)]
    patched = staff_client.patch(f"{url}/{preset_id}", {"params": {"width": 256}})
    assert patched.json()["params"] == {"width": 256}
    bad = staff_client.patch(f"{url}/{preset_id}", {"params": {"nope": 1}})
    assert bad.json()["details"]["fields"] == {"params.nope": ["Unknown parameter."]}
    base = ability.presets.get(is_base=True)
    refused = staff_client.delete(f"{url}/{base.pk}")
    assert (refused.status_code, refused.json()["code"]) == (409, "PRESET_IS_BASE")
    assert staff_client.delete(f"{url}/{preset_id}").status_code == 204
    assert staff_client.get(f"{url}/{preset_id}").json()["code"] == "PRESET_NOT_FOUND"
    missing = staff_client.post(url, {"ability": 9999, "name": "x"})
    assert missing.json()["code"] == "ABILITY_NOT_FOUND"


# ------------------------------------------------------------------------------ idempotency


def test_admin_creates_are_idempotent(staff_client):
    body = {"name": "w", "kind": "coze"}
    first = staff_client.post("/api/admin/workflows", body, HTTP_IDEMPOTENCY_KEY="k1")
    again = staff_client.post("/api/admin/workflows", body, HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert Workflow.objects.count() == 1


# ------------------------------------------------------------------------------ public catalog


def test_public_catalog(owner_client, anon, service_key, client_for, ability, binding):
    preset_create(ability=ability, name="big", params={"width": 512})
    hidden = Ability.objects.create(code="hidden", display_name="Hidden", status="inactive")
    assert anon.get("/api/abilities").status_code == 401
    listed = owner_client.get("/api/abilities")
    assert listed.status_code == 200
    assert listed.json()["total"] == 1
    item = listed.json()["items"][0]
    assert item == {
        "id": ability.pk,
        "code": "invert",
        "displayName": "Invert",
        "description": "",
        "provider": "",
        "category": "image",
        "points": 5,
        "paramsSchema": schema(),
        "defaults": {},
        "requiresImage": False,
        "maxOutputs": 1,
        "presets": [
            {"id": item["presets"][0]["id"], "name": "Base", "isBase": True, "params": {}},
            {
                "id": item["presets"][1]["id"],
                "name": "big",
                "isBase": False,
                "params": {"width": 512},
            },
        ],
    }
    assert owner_client.get(f"/api/abilities/{ability.pk}").json() == item
    missing = owner_client.get(f"/api/abilities/{hidden.pk}")
    assert (missing.status_code, missing.json()["code"]) == (404, "ABILITY_NOT_FOUND")
    assert owner_client.get("/api/abilities/424242").json()["code"] == "ABILITY_NOT_FOUND"
    _, raw = service_key(scopes=[])
    assert client_for(raw).get("/api/abilities").status_code == 200
    assert owner_client.get("/api/abilities?category=video").json()["total"] == 0


def test_catalog_list_query_count_is_flat(
    owner_client, comfy_workflow, comfy_executor, django_assert_max_num_queries
):
    for n in range(6):
        ability = ability_create(code=f"a{n}", display_name=f"A{n}")
        binding_create(ability=ability, workflow=comfy_workflow, executor=comfy_executor)
    with django_assert_max_num_queries(8):
        response = owner_client.get("/api/abilities")
    assert response.json()["total"] == 6
