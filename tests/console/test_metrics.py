"""/metrics: Prometheus text, guarded by METRICS_TOKEN (or loopback only), and it moves when
tasks run (real worker, real ComfyUI test server, real HTTP)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.tasks.conftest import make_ability, make_executor, wait_status

TOKEN = "metrics-token-0123456789"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db
def test_loopback_only_without_a_token(settings):
    settings.METRICS_TOKEN = None
    local = Client().get("/metrics")
    assert local.status_code == 200
    assert local["Content-Type"].startswith("text/plain; version=")
    assert "podi_queue_depth 0.0" in local.content.decode()
    remote = Client(REMOTE_ADDR="203.0.113.9").get("/metrics")
    assert remote.status_code == 403
    assert b"podi_" not in remote.content


@pytest.mark.django_db
def test_bearer_token_when_set(settings):
    settings.METRICS_TOKEN = TOKEN
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": TOKEN}):
        refused = Client().get("/metrics", **headers)  # loopback is not enough once a token is set
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
    allowed = Client(REMOTE_ADDR="203.0.113.9").get(
        "/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"
    )
    assert allowed.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_metrics_move_when_tasks_run(worker, comfy, funded, api, live_server, settings):
    settings.METRICS_TOKEN = TOKEN
    make_ability("invert", [make_executor("gpu-1", comfy.url, max_concurrency=3)], points=10)

    def scrape():
        response = httpx.get(
            f"{live_server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        return samples(response.text)

    before = scrape()
    assert value(before, "podi_executor_capacity", executor="gpu-1", kind="comfyui") == 3
    assert (
        value(before, "podi_executor_health", executor="gpu-1", kind="comfyui", status="unknown")
        == 1
    )
    client = api(funded)
    for _ in range(2):
        task_id = client.post("/api/tasks/v1/submit", json={"action": "invert"}).json()["taskId"]
        assert wait_status(client, task_id, {"succeeded", "failed"})["status"] == "succeeded"
    after = scrape()

    assert value(after, "podi_tasks", status="succeeded", ability="invert", executor="gpu-1") == 2
    assert value(after, "podi_queue_depth") == 0
    assert value(after, "podi_queue_oldest_age_seconds") == 0
    assert value(after, "podi_executor_in_flight", executor="gpu-1", kind="comfyui") == 0
    assert value(after, "podi_wallet_points_total", kind="charged") == 20
    assert value(after, "podi_wallet_points_total", kind="released") == 0
    run = {"ability": "invert", "executor": "gpu-1", "status": "succeeded"}
    assert (
        value(after, "podi_task_run_duration_seconds_count", **run)
        - value(before, "podi_task_run_duration_seconds_count", **run)
        == 2
    )
    assert (
        value(after, "podi_task_dispatch_latency_seconds_count", ability="invert")
        - value(before, "podi_task_dispatch_latency_seconds_count", ability="invert")
        == 2
    )
    submit = {"method": "POST", "route": "/api/tasks/v1/submit", "status": "202"}
    assert (
        value(after, "podi_http_request_duration_seconds_count", **submit)
        - value(before, "podi_http_request_duration_seconds_count", **submit)
        == 2
    )
    assert "podi_webhook_attempts_total" in {name for name, _ in after}


def _in_process(tmp_path, code: str, **env_extra) -> str:

    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "BROKER_URL"}}
    env.update(DJANGO_SETTINGS_MODULE="podi.settings", PODI_DATA_DIR=str(tmp_path), **env_extra)
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_multiprocess_dir_adds_up_every_process(tmp_path):
    """Two worker processes observe run durations; a third (the web process) exports both."""
    shared = str(tmp_path / "prom")
    observe = (
        "from podi.metrics import TASK_RUN_SECONDS\n"
        "TASK_RUN_SECONDS.labels(ability='a', executor='e', status='succeeded').observe(1.5)\n"
    )
    for _ in range(2):
        _in_process(tmp_path, observe, PROMETHEUS_MULTIPROC_DIR=shared)
    text = _in_process(
        tmp_path,
        "from prometheus_client import CollectorRegistry, generate_latest, multiprocess\n"
        "registry = CollectorRegistry()\nmultiprocess.MultiProcessCollector(registry)\n"
        "print(generate_latest(registry).decode())",
        PROMETHEUS_MULTIPROC_DIR=shared,
    )
    found = samples(text)
    labels = {"ability": "a", "executor": "e", "status": "succeeded"}
    assert value(found, "podi_task_run_duration_seconds_count", **labels) == 2
    assert value(found, "podi_task_run_duration_seconds_sum", **labels) == 3.0
