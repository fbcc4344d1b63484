"""Catalog services and selectors: keys, bindings, presets, params validation."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import close_old_connections
from django.utils import timezone

from integrations.executors.keys import api_key_pick, api_key_record_use
from integrations.models import Preset, VendorApiKey, WorkflowBinding
from integrations.selectors import (
    abilities_without_enabled_binding,
    ability_get_active,
    ability_media_params,
    ability_params_schema,
    ability_validate_params,
    binding_preview,
    bindings_for_ability,
)
from integrations.services import (
    ability_create,
    ability_delete,
    ability_update,
    api_key_create,
    api_key_delete,
    api_key_update,
    binding_create,
    binding_update,
    executor_create,
    executor_delete,
    executor_update,
    preset_create,
    preset_delete,
    preset_update,
    workflow_create,
    workflow_delete,
    workflow_version_create,
)
from podi.errors import AppError

from .conftest import IMG2IMG_GRAPH, IMG2IMG_SCHEMA, graph, schema

pytestmark = pytest.mark.django_db


def error_of(fn, **kwargs) -> AppError:
    with pytest.raises(AppError) as info:
        fn(**kwargs)
    return info.value


# ------------------------------------------------------------------------------ API keys


def test_api_key_secret_is_encrypted_and_masked():
    key = api_key_create(provider="coze", name="k", secret="pat_abcdefghijklmnop_a1b2")
    row = VendorApiKey.objects.get(pk=key.pk)
    assert "pat_abcdefghijklmnop_a1b2" not in row.secret_encrypted
    assert row.reveal() == "pat_abcdefghijklmnop_a1b2"
    assert row.masked == "pat_…a1b2"
    api_key_update(key=row, secret="sk-new-secret-value-9z9z")
    row.refresh_from_db()
    assert row.reveal() == "sk-new-secret-value-9z9z"
    assert row.masked == "sk-n…9z9z"


def test_api_key_pick_order_and_exclusions(comfy_executor):
    now = timezone.now()
    low = api_key_create(provider="x", name="low", secret="secret-low-000", priority=1)
    high = api_key_create(provider="x", name="high", secret="secret-high-000", priority=5)
    expired = api_key_create(
        provider="x", name="exp", secret="secret-exp-000", priority=9, expires_at=now
    )
    disabled = api_key_create(
        provider="x", name="off", secret="secret-off-000", priority=8, status="disabled"
    )
    exhausted = api_key_create(
        provider="x", name="full", secret="secret-full-00", priority=7, daily_quota=1
    )
    unlinked = api_key_create(provider="x", name="other", secret="secret-oth-000", priority=99)
    assert api_key_record_use(key=exhausted) is True
    comfy_executor.api_keys.set([low, high, expired, disabled, exhausted])
    assert unlinked.pk
    assert api_key_pick(executor=comfy_executor) == high
    api_key_update(key=high, status="disabled")
    assert api_key_pick(executor=comfy_executor) == low
    api_key_update(key=low, expires_at=now - timedelta(seconds=1))
    assert api_key_pick(executor=comfy_executor) is None


def test_api_key_quota_counts_and_resets_per_day():
    key = api_key_create(provider="x", name="q", secret="secret-quota-1", daily_quota=2)
    assert api_key_record_use(key=key) is True
    assert api_key_record_use(key=key) is True
    assert api_key_record_use(key=key) is False
    key.refresh_from_db()
    assert (key.used_today, key.usage_date) == (2, timezone.now().date())
    assert key.is_exhausted()
    VendorApiKey.objects.filter(pk=key.pk).update(usage_date=timezone.now().date() - timedelta(1))
    assert api_key_record_use(key=key) is True
    key.refresh_from_db()
    assert (key.used_today, key.usage_date) == (1, timezone.now().date())
    unlimited = api_key_create(provider="x", name="u", secret="secret-unlim-1")
    for _ in range(5):
        assert api_key_record_use(key=unlimited) is True
    unlimited.refresh_from_db()
    assert unlimited.used_today == 5


@pytest.mark.django_db(transaction=True)
def test_api_key_quota_holds_under_concurrency():
    key = api_key_create(provider="x", name="c", secret="secret-conc-1", daily_quota=10)
    results: list[bool] = []
    lock = threading.Lock()

    def worker():
        try:
            for _ in range(5):
                ok = api_key_record_use(key=VendorApiKey.objects.get(pk=key.pk))
                with lock:
                    results.append(ok)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    key.refresh_from_db()
    assert results.count(True) == 10
    assert results.count(False) == 10
    assert key.used_today == 10


def test_api_key_linked_to_an_executor_cannot_be_deleted(comfy_executor):
    key = api_key_create(provider="x", name="k", secret="secret-linked-1")
    comfy_executor.api_keys.add(key)
    assert error_of(api_key_delete, key=key).code == "RESOURCE_IN_USE"
    comfy_executor.api_keys.remove(key)
    api_key_delete(key=key)
    assert not VendorApiKey.objects.filter(pk=key.pk).exists()


# ------------------------------------------------------------------------------ executors


def test_executor_config_is_typed_per_kind():
    ok = executor_create(
        name="c",
        kind="coze",
        base_url="https://api.coze.cn/",
        config={"mode": "async", "read_timeout": 5, "headers": {"X-Env": "prod"}},
    )
    assert ok.base_url == "https://api.coze.cn"
    bad = error_of(
        executor_create,
        name="d",
        kind="comfyui",
        base_url="http://127.0.0.1:8188",
        config={"mode": "async", "read_timeout": -1, "headers": {"a": 1}},
    )
    assert bad.code == "VALIDATION_ERROR"
    assert bad.details["fields"] == {
        "config.mode": ["Unknown setting."],
        "config.read_timeout": ["-1 is less than or equal to the minimum of 0"],
        "config.headers.a": ["1 is not of type 'string'"],
    }
    assert error_of(executor_create, name="e", kind="http", base_url="ftp://x", config={}).details[
        "fields"
    ] == {"baseUrl": ["Must be an http(s) URL with a host."]}
    assert error_of(executor_create, name="c", kind="coze", base_url="http://x").details[
        "fields"
    ] == {"name": ["'c' is already taken."]}


def test_executor_with_bindings_cannot_be_deleted_or_change_kind(binding, comfy_executor):
    assert error_of(executor_delete, executor=comfy_executor).code == "RESOURCE_IN_USE"
    assert error_of(executor_update, executor=comfy_executor, kind="http").code == (
        "VALIDATION_ERROR"
    )
    comfy_executor.refresh_from_db()
    assert comfy_executor.kind == "comfyui"


def test_is_dispatchable(comfy_executor):
    assert comfy_executor.is_dispatchable  # unknown health is dispatchable
    comfy_executor.health_status = "unhealthy"
    assert not comfy_executor.is_dispatchable
    comfy_executor.health_status = "healthy"
    comfy_executor.enabled = False
    assert not comfy_executor.is_dispatchable


# ------------------------------------------------------------------------------ bindings


def test_binding_kind_and_version_checks(ability, comfy_workflow, comfy_executor):
    coze = executor_create(name="coze", kind="coze", base_url="https://api.coze.cn")
    error = error_of(binding_create, ability=ability, workflow=comfy_workflow, executor=coze)
    assert error.code == "INVALID_WORKFLOW_OR_EXECUTOR"
    other = workflow_create(name="other", kind="comfyui")
    other_version = workflow_version_create(
        workflow=other, definition=graph(), params_schema=schema()
    )
    error = error_of(
        binding_create,
        ability=ability,
        workflow=comfy_workflow,
        executor=comfy_executor,
        workflow_version=other_version,
    )
    assert error.code == "INVALID_WORKFLOW_OR_EXECUTOR"
    empty = workflow_create(name="empty", kind="comfyui")
    error = error_of(binding_create, ability=ability, workflow=empty, executor=comfy_executor)
    assert error.code == "INVALID_WORKFLOW_OR_EXECUTOR"
    assert not WorkflowBinding.objects.exists()


def test_resolved_version_follows_active_unless_pinned(binding, comfy_workflow):
    v1 = comfy_workflow.active_version
    assert binding.resolved_version() == v1
    v2 = workflow_version_create(
        workflow=comfy_workflow, definition=graph(), params_schema=schema()
    )
    binding.refresh_from_db()
    assert binding.resolved_version() == v2
    binding_update(binding=binding, workflow_version=v1)
    binding.refresh_from_db()
    assert binding.resolved_version() == v1


def test_bindings_for_ability_ordering_and_filters(ability, comfy_workflow, comfy_executor):
    second = executor_create(name="gpu-2", kind="comfyui", base_url="http://127.0.0.1:2")
    off = executor_create(
        name="gpu-3", kind="comfyui", base_url="http://127.0.0.1:3", enabled=False
    )
    low = binding_create(ability=ability, workflow=comfy_workflow, executor=comfy_executor)
    high = binding_create(ability=ability, workflow=comfy_workflow, executor=second, priority=10)
    binding_create(ability=ability, workflow=comfy_workflow, executor=off, priority=99)
    binding_create(ability=ability, workflow=comfy_workflow, executor=comfy_executor, enabled=False)
    assert list(bindings_for_ability(ability)) == [high, low]
    assert list(abilities_without_enabled_binding()) == []
    lonely = ability_create(code="lonely", display_name="Lonely")
    assert list(abilities_without_enabled_binding()) == [lonely]


def test_workflow_and_ability_in_use_cannot_be_deleted(binding, comfy_workflow, ability):
    assert error_of(workflow_delete, workflow=comfy_workflow).code == "RESOURCE_IN_USE"
    assert error_of(ability_delete, ability=ability).code == "RESOURCE_IN_USE"


# ------------------------------------------------------------------------------ abilities and params


def test_ability_gets_a_base_preset_that_cannot_be_deleted(ability):
    base = ability.presets.get()
    assert (base.name, base.is_base, base.params) == ("Base", True, {})
    error = error_of(preset_delete, preset=base)
    assert (error.code, error.status) == ("PRESET_IS_BASE", 409)
    assert Preset.objects.filter(pk=base.pk).exists()


def test_ability_get_active(ability):
    assert ability_get_active(code="invert") == ability
    ability_update(ability=ability, status="inactive")
    assert error_of(ability_get_active, code="invert").code == "ABILITY_NOT_FOUND"
    assert error_of(ability_get_active, code="nope").code == "ABILITY_NOT_FOUND"


def test_params_schema_comes_from_the_bound_active_version(ability, binding, comfy_workflow):
    assert ability_params_schema(ability) == schema()
    new_schema = schema()
    new_schema["properties"]["label"]["maxLength"] = 5
    workflow_version_create(workflow=comfy_workflow, definition=graph(), params_schema=new_schema)
    assert ability_params_schema(ability)["properties"]["label"]["maxLength"] == 5
    lonely = ability_create(code="lonely", display_name="Lonely")
    assert ability_params_schema(lonely) == {"type": "object", "properties": {}}


def test_validate_params_merges_layers_in_order(ability, binding):
    base = ability.presets.get(is_base=True)
    preset_update(preset=base, params={"width": 100, "height": 100, "label": "base"})
    ability_update(ability=ability, defaults={"height": 200})
    style = preset_create(ability=ability, name="wide", params={"width": 300})
    assert ability_validate_params(ability=ability, params={}) == {
        "width": 100,
        "height": 200,
        "label": "base",
    }
    assert ability_validate_params(ability=ability, params={"label": "x"}, preset="wide") == {
        "width": 300,
        "height": 200,
        "label": "x",
    }
    assert ability_validate_params(ability=ability, params={}, preset=style.pk)["width"] == 300
    assert ability_validate_params(ability=ability, params={}, preset=style)["width"] == 300


def test_validate_params_uses_schema_defaults(ability, binding):
    assert ability_validate_params(ability=ability, params={"label": "a"}) == {
        "width": 64,
        "height": 64,
        "label": "a",
    }


def test_validate_params_errors_name_the_field(ability, binding):
    error = error_of(
        ability_validate_params,
        ability=ability,
        params={"width": "wide", "height": 0, "colour": 1},
    )
    assert error.code == "VALIDATION_ERROR"
    assert error.details["fields"] == {
        "colour": ["Unknown parameter."],
        "height": ["0 is less than the minimum of 1"],
        "label": ["'label' is a required property"],
        "width": ["'wide' is not of type 'integer'"],
    }
    error = error_of(ability_validate_params, ability=ability, params={"label": "a"}, preset="zz")
    assert error.details["fields"] == {"preset": ["No preset 'zz' for this ability."]}
    error = error_of(ability_validate_params, ability=ability, params=["a"])
    assert error.details["fields"] == {"params": ["Must be an object."]}


def test_presets_are_checked_against_the_schema(ability, binding):
    error = error_of(preset_create, ability=ability, name="bad", params={"width": "x", "nope": 1})
    assert error.details["fields"] == {
        "params.nope": ["Unknown parameter."],
        "params.width": ["'x' is not of type 'integer'"],
    }
    assert error_of(preset_create, ability=ability, name="Base", params={}).code == (
        "VALIDATION_ERROR"
    )
    assert ability.presets.count() == 1


def test_media_params_in_schema_order(db):
    workflow = workflow_create(name="img", kind="comfyui")

    workflow_version_create(
        workflow=workflow, definition=IMG2IMG_GRAPH, params_schema=IMG2IMG_SCHEMA
    )
    executor = executor_create(name="g", kind="comfyui", base_url="http://127.0.0.1:1")
    ability = ability_create(code="img", display_name="Img", requires_image=True)
    binding_create(ability=ability, workflow=workflow, executor=executor)
    assert ability_media_params(ability) == ["image"]


def test_binding_preview_fills_the_definition(binding):
    result = binding_preview(binding=binding, params={"label": 'a"b'})
    assert result["version"] == 1
    assert result["params"] == {"width": 64, "height": 64, "label": 'a"b'}
    assert result["filled"]["1"]["inputs"] == {
        "width": 64,
        "height": 64,
        "batch_size": 1,
        "color": 0,
    }
    assert result["filled"]["3"]["inputs"]["filename_prefix"] == 'podi/tsk_testrun_a"b'
