"""The admin index is the operations dashboard: numbers from console.selectors, each a link to
the filtered changelist that lists exactly those rows."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from integrations.agents.models import Agent
from integrations.models import Executor, WorkflowBinding
from podi.ids import new_id
from podi.realtime.models import WebhookDelivery
from tasks.models import Task
from tests.tasks.conftest import make_ability, make_executor
from wallet.services import hold_confirm, hold_freeze, wallet_grant

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(owner):
    """Two executors (one unhealthy), tasks in every state, a binding missing a node, a failing
    webhook endpoint, an offline agent and 25 points charged today."""
    now = timezone.now()
    gpu1 = make_executor("gpu-1", "http://127.0.0.1:9", health_status="healthy", max_concurrency=4)
    gpu2 = make_executor("gpu-2", "http://127.0.0.1:9", health_status="unhealthy")
    Executor.objects.filter(pk=gpu2.pk).update(health_error="Cannot connect to gpu-2.")
    invert = make_ability("invert", [gpu1])
    make_ability("upscale", [gpu2])
    WorkflowBinding.objects.filter(ability=invert).update(missing_node_classes=["Foo"])

    def task(status, created_ago, finished_ago=None, executor=None):
        return Task.objects.create(
            public_id=new_id("tsk"),
            user=owner,
            ability=invert,
            action="invert",
            status=status,
            executor=executor,
            created_at=now - timedelta(seconds=created_ago),
            finished_at=now - timedelta(seconds=finished_ago) if finished_ago is not None else None,
        )

    oldest = task("queued", 3725)
    task("queued", 10)
    task("running", 60, executor=gpu1)
    task("running", 50, executor=gpu1)
    task("failed", 600, finished_ago=120)
    task("failed", 9000, finished_ago=7200)  # over an hour ago: not counted
    for ago in (30, 90, 200):
        task("succeeded", 400, finished_ago=ago)
    task("succeeded", 4000, finished_ago=3600)
    WebhookDelivery.objects.create(
        public_id=new_id("whd"),
        user=owner,
        event_type="task.failed",
        url="https://hooks.example.com/podi",
        status="failed",
    )
    WebhookDelivery.objects.create(
        public_id=new_id("whd"),
        user=owner,
        event_type="task.failed",
        url="https://hooks.example.com/podi",
        status="exhausted",
    )
    Agent.objects.create(
        name="agent-2", executor=gpu2, base_url="http://127.0.0.1:9", status="offline"
    )
    wallet_grant(user=owner, points=100, reason="test", reference="seed")
    hold, _ = hold_freeze(user=owner, task_id="tsk_x", points=25, action="invert", channel="task")
    hold_confirm(hold=hold)
    return {"oldest": oldest, "gpu1": gpu1, "gpu2": gpu2}


def test_ops_json_numbers(console, fleet):
    body = console.get("/admin/ops.json").json()
    tasks = body["tasks"]
    assert (tasks["queued"], tasks["running"], tasks["failedLastHour"]) == (2, 2, 1)
    assert tasks["succeededPerMinute"] == 0.6  # 3 in the last 5 minutes
    assert tasks["oldestQueued"]["taskId"] == fleet["oldest"].public_id
    assert 3724 <= tasks["oldestQueued"]["ageSeconds"] <= 3800
    assert body["points"] == {"charged": 25, "released": 0}
    executors = [
        (e["name"], e["health"], e["running"], e["maxConcurrency"]) for e in body["executors"]
    ]
    assert executors == [("gpu-2", "unhealthy", 0, 4), ("gpu-1", "healthy", 2, 4)]
    assert body["bindings"]["count"] == 2
    assert sorted(b["problem"] for b in body["bindings"]["items"]) == [
        "executor gpu-2 is unhealthy",
        "gpu-1 lacks Foo",
    ]
    assert body["webhooks"] == {
        "count": 1,
        "items": [{"url": "https://hooks.example.com/podi", "failing": 1, "exhausted": 1}],
    }
    assert body["agents"]["count"] == 1
    assert body["agents"]["items"][0]["name"] == "agent-2"
    assert "html" not in body
    fragment = console.get("/admin/ops.json?fragment=1").json()["html"]
    assert 'id="ops-queued"' in fragment


def result_count(html: str) -> int:
    found = re.search(r'<p class="paginator">\s*(\d+) ', html)
    assert found, html[-2000:]
    return int(found.group(1))


def test_index_shows_the_numbers_and_each_links_to_its_rows(console, fleet):
    page = console.get("/admin/").content.decode()
    tiles = re.findall(
        r'<a class="ops-tile[^"]*" id="ops-(\w+)" href="([^"]+)"><b>([^<]+)</b>', page
    )
    links = {name: href.replace("&amp;", "&") for name, href, _ in tiles}
    numbers = {name: value for name, _, value in tiles}
    assert numbers == {
        "queued": "2",
        "running": "2",
        "failed": "1",
        "oldest": "1 h 02 m",
        "succeeded": "0.6",
        "charged": "25",
    }
    for name, expected in (("queued", 2), ("running", 2), ("failed", 1), ("succeeded", 3)):
        response = console.get(links[name])
        assert response.status_code == 200, (name, links[name])
        assert result_count(response.content.decode()) == expected, name
    assert links["oldest"] == f"/admin/tasks/task/{fleet['oldest'].pk}/change/"
    charged = console.get(links["charged"]).content.decode()
    assert result_count(charged) == 1
    sections = {
        "bindings": ("/admin/integrations/workflowbinding/?runnable=no", 2),
        "webhooks": ("/admin/realtime/webhookdelivery/?attention=failing", 1),
        "agents": ("/admin/agents/agent/?liveness=offline", 1),
    }
    for name, (href, expected) in sections.items():
        assert f'href="{href}"' in page, name
        assert result_count(console.get(href).content.decode()) == expected, name
    assert "Cannot connect to gpu-2." in page
    assert "gpu-1 lacks Foo" in page
    assert 'data-src="/admin/ops.json?fragment=1"' in page


def test_ops_json_is_staff_only(fleet, owner):
    anonymous = Client().get("/admin/ops.json")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    user = Client()
    user.force_login(owner)
    assert user.get("/admin/ops.json").status_code == 302


NOISE = ["Django Dramatiq", "Outstanding tokens", "Idempotency records", "Upload key versions"]


def test_noise_is_hidden_from_operators_not_from_superusers(console, operator):
    superuser_page = console.get("/admin/").content.decode()
    operator_page = operator.get("/admin/").content.decode()
    for label in NOISE:
        assert label.lower() in superuser_page.lower(), label
        assert label.lower() not in operator_page.lower(), label
    assert "Tasks" in operator_page and "Executors" in operator_page


def test_favicon_and_no_view_site_link(console, anon):
    icon = Client().get("/favicon.ico")
    assert icon.status_code == 200
    assert icon["Content-Type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    page = console.get("/admin/").content.decode()
    assert "View site" not in page
    assert 'rel="icon"' in page
