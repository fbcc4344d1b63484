"""Executor headers are secrets at rest: stored encrypted, sent to the executor, never shown."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse

from integrations.models import Executor
from integrations.services import executor_create, executor_health_check
from integrations.validation import executor_headers
from tests.servers.comfyui import ComfyUITestServer

pytestmark = pytest.mark.django_db

SECRET = "Bearer hdr-secret-0123456789"


def raw_config(executor_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT config FROM integrations_executor WHERE id = %s", [executor_id])
        return str(cursor.fetchone()[0])


def test_headers_are_encrypted_at_rest_and_masked_on_read(staff_client):
    created = staff_client.post(
        "/api/admin/executors",
        {
            "name": "gpu",
            "kind": "comfyui",
            "baseUrl": "http://127.0.0.1:8188",
            "config": {"headers": {"X-Api-Auth": SECRET, "X-Tenant": "acme"}},
        },
    )
    assert created.status_code == 201, created.json()
    executor_id = created.json()["id"]
    assert created.json()["config"] == {"headers": {"X-Api-Auth": "Bear…6789", "X-Tenant": "…"}}
    assert SECRET not in raw_config(executor_id)
    assert "acme" not in raw_config(executor_id)
    shown = staff_client.get(f"/api/admin/executors/{executor_id}").content.decode()
    assert "hdr-secret" not in shown and "acme" not in shown
    # A new value replaces a header; a masked one keeps it; a missing one removes it.
    patched = staff_client.patch(
        f"/api/admin/executors/{executor_id}",
        {"config": {"headers": {"X-Api-Auth": "Bear…6789", "X-New": "v2"}}},
    )
    assert patched.status_code == 200, patched.json()
    stored = Executor.objects.get(pk=executor_id)
    assert executor_headers(stored.config) == {"X-Api-Auth": SECRET, "X-New": "v2"}


def test_the_executor_receives_the_decrypted_headers():
    with ComfyUITestServer() as comfy:
        executor = executor_create(
            name="gpu",
            kind="comfyui",
            base_url=comfy.url,
            config={"read_timeout": 2, "headers": {"X-Api-Auth": SECRET}},
        )
        executor_health_check(executor=executor)
        assert comfy.requests, "the health check called the executor"
        assert all(r.headers.get("X-Api-Auth") == SECRET for r in comfy.requests)


def test_the_admin_shows_masked_headers_and_keeps_them_on_save(staff):
    executor = executor_create(
        name="gpu",
        kind="comfyui",
        base_url="http://127.0.0.1:8188",
        config={"headers": {"X-Api-Auth": SECRET}},
    )
    console = Client()
    console.force_login(staff)
    change = reverse("admin:integrations_executor_change", args=[executor.pk])
    page = console.get(change)
    assert page.status_code == 200
    assert "hdr-secret" not in page.content.decode()
    shown = page.context["adminform"].form.initial["config"]
    assert shown == {"headers": {"X-Api-Auth": "Bear…6789"}}
    saved = console.post(
        change,
        {
            "name": "gpu",
            "kind": "comfyui",
            "base_url": "http://127.0.0.1:8188",
            "enabled": "on",
            "max_concurrency": "1",
            "weight": "1",
            "config": json.dumps({"headers": {"X-Api-Auth": "Bear…6789"}, "read_timeout": 3}),
            "bindings-TOTAL_FORMS": "0",
            "bindings-INITIAL_FORMS": "0",
        },
    )
    assert saved.status_code == 302, saved.content.decode()[:1000]
    executor.refresh_from_db()
    assert executor_headers(executor.config) == {"X-Api-Auth": SECRET}
    assert executor.config["read_timeout"] == 3
    assert SECRET not in raw_config(executor.pk)


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_headers_stored_in_plain_text():
    migrator = MigrationExecutor(connection)
    target = [("integrations", "0002_agents")]
    migrator.migrate(target)
    # The executor as it was then (later migrations add columns the current model has).
    OldExecutor = migrator.loader.project_state(target).apps.get_model("integrations", "Executor")  # noqa: N806
    try:
        plain = OldExecutor.objects.create(
            name="old",
            kind="comfyui",
            base_url="http://127.0.0.1:8188",
            config={"read_timeout": 2, "headers": {"Authorization": SECRET}},
        )
        bare = OldExecutor.objects.create(
            name="bare", kind="comfyui", base_url="http://127.0.0.1:8189", config={}
        )
    finally:
        migrator = MigrationExecutor(connection)
        migrator.migrate(migrator.loader.graph.leaf_nodes())
    plain = Executor.objects.get(pk=plain.pk)
    assert SECRET not in raw_config(plain.pk)
    assert set(plain.config) == {"read_timeout", "headers_encrypted"}
    assert executor_headers(plain.config) == {"Authorization": SECRET}
    bare = Executor.objects.get(pk=bare.pk)
    assert bare.config == {}
