"""Smoke tests for every console page and action of the integrations admin."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from integrations.executors.keys import api_key_record_use
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
    api_key_create,
    preset_create,
    workflow_version_create,
)
from tests.servers.comfyui import ComfyUITestServer

from .conftest import graph, schema

pytestmark = pytest.mark.django_db

SECRET = "pat_ADMIN-PAGE-SECRET-VALUE_z9z9"


@pytest.fixture
def console(staff):
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def key(comfy_executor):
    key = api_key_create(provider="coze", name="main", secret=SECRET, daily_quota=10)
    comfy_executor.api_keys.add(key)
    return key


def url(name: str, *args) -> str:
    return reverse(f"admin:integrations_{name}", args=args)


def page(console, path: str, query: str = "") -> str:
    response = console.get(path + query)
    assert response.status_code == 200, (path, query, response.status_code)
    text = response.content.decode()
    assert SECRET not in text
    return text


# ------------------------------------------------------------------------------ pages


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?health=unhealthy",
        "?health=stale",
        "?enabled__exact=0",
        "?kind__exact=comfyui",
        "?q=gpu",
    ],
)
def test_executor_changelist(console, binding, key, query):
    text = page(console, url("executor_changelist"), query)
    if query in ("", "?q=gpu", "?kind__exact=comfyui", "?health=stale"):
        assert "gpu-1" in text


def test_executor_pages(console, binding, key, comfy_executor):
    Executor.objects.filter(pk=comfy_executor.pk).update(
        health_status="unhealthy", health_error="Cannot connect to <b>x</b>"
    )
    text = page(console, url("executor_changelist"), "?health=unhealthy")
    assert "Cannot connect to &lt;b&gt;x&lt;/b&gt;" in text  # escaped, coloured
    assert "#cf222e" in text
    text = page(console, url("executor_change", comfy_executor.pk))
    assert "Check now" in text
    page(console, url("executor_add"))


def test_executor_add_and_change_through_the_form(console):
    response = console.post(
        url("executor_add"),
        {
            "name": "gpu-9",
            "kind": "comfyui",
            "base_url": "http://comfy-box:8188",
            "enabled": "on",
            "max_concurrency": "2",
            "weight": "1",
            "config": '{"read_timeout": 5}',
            "bindings-TOTAL_FORMS": "0",
            "bindings-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    executor = Executor.objects.get(name="gpu-9")
    assert executor.config == {"read_timeout": 5}
    bad = console.post(
        url("executor_change", executor.pk),
        {
            "name": "gpu-9",
            "kind": "comfyui",
            "base_url": "http://comfy-box:8188",
            "max_concurrency": "2",
            "weight": "1",
            "config": '{"mode": "sync"',
            "bindings-TOTAL_FORMS": "0",
            "bindings-INITIAL_FORMS": "0",
        },
    )
    assert bad.status_code == 200
    assert "Not valid JSON" in bad.content.decode()
    bad = console.post(
        url("executor_change", executor.pk),
        {
            "name": "gpu-9",
            "kind": "comfyui",
            "base_url": "http://comfy-box:8188",
            "max_concurrency": "2",
            "weight": "1",
            "config": '{"mode": "sync"}',
            "bindings-TOTAL_FORMS": "0",
            "bindings-INITIAL_FORMS": "0",
        },
    )
    assert "config.mode: Unknown setting." in bad.content.decode()
    executor.refresh_from_db()
    assert executor.config == {"read_timeout": 5}


def test_executor_check_now_button_and_action(console, comfy_executor):
    with ComfyUITestServer() as comfy:
        Executor.objects.filter(pk=comfy_executor.pk).update(base_url=comfy.url)
        response = console.post(url("executor_check", comfy_executor.pk), follow=True)
        assert response.status_code == 200
        assert "gpu-1: healthy" in response.content.decode().lower()
        comfy.installed_nodes = ["EmptyImage"]
        response = console.post(
            url("executor_changelist"),
            {"action": "check_now", "_selected_action": [comfy_executor.pk]},
            follow=True,
        )
    assert response.status_code == 200
    comfy_executor.refresh_from_db()
    assert comfy_executor.health_status == "healthy"  # no bindings: nothing required


def test_executor_enable_disable_actions(console, comfy_executor):
    for action, expected in (("disable", False), ("enable", True)):
        response = console.post(
            url("executor_changelist"), {"action": action, "_selected_action": [comfy_executor.pk]}
        )
        assert response.status_code == 302
        comfy_executor.refresh_from_db()
        assert comfy_executor.enabled is expected


def test_vendor_key_pages_mask_the_secret(console, key):
    api_key_record_use(key=key)
    for _ in range(8):
        api_key_record_use(key=key)
    text = page(console, url("vendorapikey_changelist"))
    assert "pat_…z9z9" in text and "9 / 10 (90%)" in text
    text = page(console, url("vendorapikey_changelist"), "?quota=near")
    assert "pat_…z9z9" in text
    VendorApiKey.objects.filter(pk=key.pk).update(
        expires_at=timezone.now() + timezone.timedelta(days=3)
    )
    assert "pat_…z9z9" in page(console, url("vendorapikey_changelist"), "?expiry=soon")
    assert "pat_…z9z9" not in page(console, url("vendorapikey_changelist"), "?expiry=expired")
    text = page(console, url("vendorapikey_change", key.pk))
    assert 'type="password"' in text
    page(console, url("vendorapikey_add"))
    page(console, url("vendorapikey_changelist"), "?q=main")


def test_vendor_key_form_writes_through_the_service(console, key):
    response = console.post(
        url("vendorapikey_add"),
        {
            "provider": "openai",
            "name": "o",
            "secret": "sk-form-secret-1234",
            "status": "active",
            "priority": "0",
        },
    )
    assert response.status_code == 302
    created = VendorApiKey.objects.get(name="o")
    assert created.reveal() == "sk-form-secret-1234"
    response = console.post(
        url("vendorapikey_change", created.pk),
        {"provider": "openai", "name": "o2", "secret": "", "status": "active", "priority": "1"},
    )
    assert response.status_code == 302
    created.refresh_from_db()
    assert (created.name, created.reveal()) == ("o2", "sk-form-secret-1234")
    for action, status in (("disable", "disabled"), ("enable", "active")):
        console.post(
            url("vendorapikey_changelist"), {"action": action, "_selected_action": [created.pk]}
        )
        created.refresh_from_db()
        assert created.status == status


def test_workflow_pages_and_diff(console, comfy_workflow, staff):
    changed = graph()
    changed["1"]["inputs"]["color"] = 255
    v2 = workflow_version_create(
        workflow=comfy_workflow, definition=changed, params_schema=schema(), created_by=staff
    )
    text = page(console, url("workflow_changelist"))
    assert "invert" in text and "v2" in text
    page(console, url("workflow_changelist"), "?has_active=no")
    page(console, url("workflow_changelist"), "?q=inv")
    text = page(console, url("workflow_change", comfy_workflow.pk))
    assert "version history" in text.lower() and "diff with v1" in text
    text = page(console, url("workflowversion_change", v2.pk))
    assert '<span style="background:#ffebe9">-        &quot;color&quot;: 0,</span>' in text
    assert '<span style="background:#e6ffec">+        &quot;color&quot;: 255,</span>' in text
    page(console, url("workflowversion_changelist"))
    page(console, url("workflow_add"))


def test_workflow_json_editor_creates_versions_and_shows_errors(console, comfy_workflow):
    base = {
        "name": "invert",
        "description": "",
        "new_params_schema": json.dumps(schema()),
        "new_outputs": "[]",
        "new_changelog": "",
        "activate": "on",
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
    }
    ui = console.post(
        url("workflow_change", comfy_workflow.pk),
        base | {"new_definition": json.dumps({"nodes": [], "links": []})},
    )
    assert ui.status_code == 200
    assert "Export (API)" in ui.content.decode()
    undeclared = graph()
    undeclared["1"]["inputs"]["color"] = "{{colour}}"
    bad = console.post(
        url("workflow_change", comfy_workflow.pk), base | {"new_definition": json.dumps(undeclared)}
    )
    assert "{{colour}}" in bad.content.decode()
    assert comfy_workflow.versions.count() == 1
    same = console.post(
        url("workflow_change", comfy_workflow.pk), base | {"new_definition": json.dumps(graph())}
    )
    assert same.status_code == 302
    assert comfy_workflow.versions.count() == 1  # unchanged JSON: no new version
    changed = graph()
    changed["1"]["inputs"]["color"] = 7
    ok = console.post(
        url("workflow_change", comfy_workflow.pk),
        base | {"new_definition": json.dumps(changed), "new_changelog": "colour 7"},
    )
    assert ok.status_code == 302
    comfy_workflow.refresh_from_db()
    assert comfy_workflow.active_version.version == 2
    assert comfy_workflow.active_version.changelog == "colour 7"
    created = console.post(
        url("workflow_add"),
        {
            "name": "new-wf",
            "kind": "comfyui",
            "description": "",
            "new_definition": json.dumps(graph()),
            "new_params_schema": json.dumps(schema()),
            "new_outputs": "",
            "activate": "on",
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )
    assert created.status_code == 302
    assert Workflow.objects.get(name="new-wf").active_version.version == 1


def test_workflow_version_activate_action(console, comfy_workflow):
    v1 = comfy_workflow.active_version
    workflow_version_create(workflow=comfy_workflow, definition=graph(), params_schema=schema())
    response = console.post(
        url("workflowversion_changelist"), {"action": "activate", "_selected_action": [v1.pk]}
    )
    assert response.status_code == 302
    comfy_workflow.refresh_from_db()
    assert comfy_workflow.active_version == v1


def test_ability_pages(console, binding, ability):
    text = page(console, url("ability_changelist"))
    assert "1 enabled / 1" in text
    lonely = Ability.objects.create(code="lonely", display_name="Lonely")
    text = page(console, url("ability_changelist"), "?bindings=none")
    assert "lonely" in text and ">invert<" not in text
    page(console, url("ability_changelist"), "?bindings=unhealthy")
    page(console, url("ability_changelist"), "?bindings=ok&q=inv")
    text = page(console, url("ability_change", ability.pk))
    assert "&quot;label&quot;" in text  # the read-only params schema
    assert "invert v1" in text
    page(console, url("ability_change", lonely.pk))
    page(console, url("ability_add"))


def test_ability_add_creates_the_base_preset_and_actions(console):
    response = console.post(
        url("ability_add"),
        {
            "code": "upscale",
            "display_name": "Upscale",
            "points": "3",
            "defaults": "{}",
            "status": "active",
            "max_outputs": "1",
            "bindings-TOTAL_FORMS": "0",
            "bindings-INITIAL_FORMS": "0",
            "presets-TOTAL_FORMS": "0",
            "presets-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    ability = Ability.objects.get(code="upscale")
    assert list(ability.presets.values_list("name", "is_base")) == [("Base", True)]
    for action, status in (("deactivate", "inactive"), ("activate", "active")):
        console.post(
            url("ability_changelist"), {"action": action, "_selected_action": [ability.pk]}
        )
        ability.refresh_from_db()
        assert ability.status == status


def test_ability_inlines_go_through_services(console, ability, comfy_workflow, comfy_executor):
    base = ability.presets.get()
    data = {
        "code": "invert",
        "display_name": "Invert",
        "description": "",
        "category": "image",
        "provider": "",
        "points": "5",
        "defaults": "{}",
        "status": "active",
        "max_outputs": "1",
        "bindings-TOTAL_FORMS": "1",
        "bindings-INITIAL_FORMS": "0",
        "bindings-0-workflow": str(comfy_workflow.pk),
        "bindings-0-executor": str(comfy_executor.pk),
        "bindings-0-priority": "1",
        "bindings-0-weight": "1",
        "bindings-0-enabled": "on",
        "bindings-0-max_attempts": "3",
        "bindings-0-queue_timeout": "600",
        "bindings-0-run_timeout": "600",
        "presets-TOTAL_FORMS": "2",
        "presets-INITIAL_FORMS": "1",
        "presets-0-id": str(base.pk),
        "presets-0-ability": str(ability.pk),
        "presets-0-name": "Base",
        "presets-0-params": "{}",
        "presets-0-DELETE": "on",
        "presets-1-ability": str(ability.pk),
        "presets-1-name": "wide",
        "presets-1-params": '{"width": 300}',
    }
    refused = console.post(url("ability_change", ability.pk), data)
    assert refused.status_code == 200
    assert "The base preset cannot be deleted." in refused.content.decode()
    assert not WorkflowBinding.objects.exists()
    del data["presets-0-DELETE"]
    response = console.post(url("ability_change", ability.pk), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert WorkflowBinding.objects.get().priority == 1
    assert Preset.objects.get(name="wide").params == {"width": 300}


def test_binding_pages_and_actions(console, binding):
    text = page(console, url("workflowbinding_changelist"))
    assert "active (v1)" in text
    page(console, url("workflowbinding_changelist"), "?pinned=pinned")
    page(console, url("workflowbinding_changelist"), "?q=invert")
    assert "Test run" in page(console, url("workflowbinding_change", binding.pk))
    page(console, url("workflowbinding_add"))
    response = console.post(
        url("workflowbinding_changelist"), {"action": "test_run", "_selected_action": [binding.pk]}
    )
    assert response.status_code == 302
    assert response["Location"] == url("workflowbinding_test_run", binding.pk)
    for action, enabled in (("disable", False), ("enable", True)):
        console.post(
            url("workflowbinding_changelist"), {"action": action, "_selected_action": [binding.pk]}
        )
        binding.refresh_from_db()
        assert binding.enabled is enabled


def test_binding_test_run_page_fills_the_definition(console, binding, ability):
    preset_create(ability=ability, name="wide", params={"width": 300})
    page(console, url("workflowbinding_test_run", binding.pk))
    response = console.post(
        url("workflowbinding_test_run", binding.pk),
        {
            "params": json.dumps({"label": '<script>"x"'}),
            "preset": ability.presets.get(name="wide").pk,
        },
    )
    assert response.status_code == 200
    text = response.content.decode()
    assert "&quot;width&quot;: 300" in text
    assert "podi/tsk_testrun_&lt;script&gt;\\&quot;x\\&quot;" in text
    assert "<script>" not in text.split("test-run-filled")[1]
    bad = console.post(url("workflowbinding_test_run", binding.pk), {"params": '{"width": "x"}'})
    text = bad.content.decode()
    assert "width: &#x27;x&#x27; is not of type &#x27;integer&#x27;" in text
    assert "label: &#x27;label&#x27; is a required property" in text


def test_preset_pages(console, ability, binding):
    wide = preset_create(ability=ability, name="wide", params={"width": 300})
    base = ability.presets.get(is_base=True)
    page(console, url("preset_changelist"))
    page(console, url("preset_changelist"), "?is_base__exact=1&q=invert")
    page(console, url("preset_change", wide.pk))
    text = page(console, url("preset_change", base.pk))
    assert "deletelink" not in text
    page(console, url("preset_add"))
    response = console.post(
        url("preset_changelist"),
        {"action": "delete_selected", "_selected_action": [wide.pk, base.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302, 403)  # a base preset blocks bulk deletion
    assert Preset.objects.filter(pk=base.pk).exists()
    response = console.post(
        url("preset_changelist"),
        {"action": "delete_selected", "_selected_action": [wide.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not Preset.objects.filter(pk=wide.pk).exists()


def test_dashboard(console, binding, key, comfy_executor):
    Executor.objects.filter(pk=comfy_executor.pk).update(
        health_status="unhealthy", health_error="down"
    )
    Ability.objects.create(code="orphan", display_name="Orphan")
    for _ in range(9):
        api_key_record_use(key=key)
    text = page(console, reverse("admin:index"))
    assert "Executors" in text and "gpu-1" in text and "down" in text
    assert "orphan" in text
    assert "pat_…z9z9" in text


def test_versions_are_read_only_in_admin(console, comfy_workflow):
    version = WorkflowVersion.objects.get()
    response = console.post(url("workflowversion_change", version.pk), {"changelog": "edit"})
    assert response.status_code == 403
    version.refresh_from_db()
    assert version.changelog == ""
