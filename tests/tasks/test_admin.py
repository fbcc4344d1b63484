"""Smoke tests of the task console: every page and action, with pinned query counts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.models import WorkflowBinding
from tasks.models import Task, TaskBatch, TaskStatus, TaskTemplate
from tasks.selectors import ability_invocation_stats
from tasks.services import batch_submit, task_submit
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor, wait_for
from wallet.models import Hold

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def console(staff):
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def tasks(funded, comfy):
    ability = make_ability(
        "sleep",
        [make_executor("gpu-1", comfy.url)],
        graph=SLEEP_GRAPH,
        schema=SLEEP_SCHEMA,
        points=2,
    )
    made = [task_submit(user=funded, action="sleep", client_ref=f"r{i}") for i in range(3)]
    Task.objects.filter(pk=made[0].pk).update(
        status=TaskStatus.FAILED, error_code="EXECUTOR_ERROR", finished_at=timezone.now()
    )
    Task.objects.filter(pk=made[1].pk).update(
        status=TaskStatus.QUEUED, queue_deadline=timezone.now() - timedelta(minutes=1)
    )
    batch_submit(user=funded, action="sleep", items=[{}, {}])
    TaskTemplate.objects.create(public_id="tpl_x", name="Two", ability=ability, items=[{}, {}])
    return made


def test_task_changelist_and_filters(console, tasks):
    for query in [
        "",
        "?attention=stuck",
        "?attention=failing",
        "?attention=retried",
        "?status=failed",
        "?q=r1",
    ]:
        response = console.get(f"/admin/tasks/task/{query}")
        assert response.status_code == 200, query
    stuck = console.get("/admin/tasks/task/?attention=stuck").content.decode()
    assert tasks[1].public_id in stuck
    assert tasks[2].public_id not in stuck
    failing = console.get("/admin/tasks/task/?attention=failing").content.decode()
    assert tasks[0].public_id in failing
    assert "EXECUTOR_ERROR" in failing


def test_task_changelist_query_count_does_not_grow(console, tasks, funded):
    with CaptureQueriesContext(connection) as few:
        console.get("/admin/tasks/task/")
    for index in range(5):
        task_submit(user=funded, action="sleep", client_ref=f"more{index}")
    with CaptureQueriesContext(connection) as more:
        console.get("/admin/tasks/task/")
    assert len(more) == len(few)


def test_task_change_page_shows_events_and_assets(console, tasks):
    response = console.get(f"/admin/tasks/task/{tasks[2].pk}/change/")
    assert response.status_code == 200
    assert "task.status" in response.content.decode()


def test_cancel_and_retry_actions(console, tasks):
    queued = tasks[2]
    response = console.post(
        "/admin/tasks/task/",
        {"action": "cancel_tasks", "_selected_action": [queued.pk, tasks[0].pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Canceled 1 task(s); 1 already finished." in response.content.decode()
    queued.refresh_from_db()
    assert queued.status == TaskStatus.CANCELED
    assert Hold.objects.get(public_id=queued.hold_id).status == "released"

    before = Task.objects.count()
    response = console.post(
        "/admin/tasks/task/",
        {"action": "retry_tasks", "_selected_action": [tasks[0].pk]},
        follow=True,
    )
    assert "Queued 1 retry task(s)" in response.content.decode()
    assert Task.objects.count() == before + 1
    assert Task.objects.filter(original_task=tasks[0]).count() == 1


def test_batch_template_and_stats_pages(console, tasks):
    batch = TaskBatch.objects.get()
    assert console.get("/admin/tasks/taskbatch/").status_code == 200
    assert console.get(f"/admin/tasks/taskbatch/{batch.pk}/change/").status_code == 200
    assert console.get("/admin/tasks/tasktemplate/").status_code == 200
    assert console.get("/admin/tasks/tasktemplate/add/").status_code == 200
    template = TaskTemplate.objects.get()
    assert console.get(f"/admin/tasks/tasktemplate/{template.pk}/change/").status_code == 200
    stats = console.get("/admin/tasks/abilityinvocationlog/?days=30")
    assert stats.status_code == 200
    html = stats.content.decode()
    assert "sleep" in html
    assert "invocations" in html


def test_ability_invocation_stats_exact(funded, comfy):
    make_ability(
        "sleep",
        [make_executor("gpu-1", comfy.url)],
        graph=SLEEP_GRAPH,
        schema=SLEEP_SCHEMA,
        points=2,
    )
    now = timezone.now()
    outcomes = [
        ("succeeded", 1),
        ("succeeded", 2),
        ("succeeded", 3),
        ("failed", 10),
        ("queued", None),
    ]
    for status, seconds in outcomes:
        task = task_submit(user=funded, action="sleep")
        fields = {"status": status}
        if seconds is not None:
            fields.update(started_at=now, finished_at=now + timedelta(seconds=seconds))
        Task.objects.filter(pk=task.pk).update(**fields)
    (row,) = ability_invocation_stats(since=now - timedelta(days=1))
    assert row["action"] == "sleep"
    assert row["count"] == 5
    assert (row["succeeded"], row["failed"], row["canceled"], row["active"]) == (3, 1, 0, 1)
    assert row["successRate"] == 75.0
    assert row["p50"] == 3.0  # nearest rank over [1, 2, 3, 10]
    assert row["p95"] == 10.0
    assert row["points"] == 6


def test_binding_test_run_submits_a_free_task_on_that_binding(
    console, staff, worker, comfy, comfy2
):
    first, second = make_executor("gpu-a", comfy.url), make_executor("gpu-b", comfy2.url)
    make_ability("invert", [first, second], priorities=[10, 0], points=50)
    pinned = WorkflowBinding.objects.get(executor=second)
    response = console.post(
        f"/admin/integrations/workflowbinding/{pinned.pk}/test-run/",
        {"params": '{"width": 4, "height": 4}', "_submit": "1"},
    )
    assert response.status_code == 302
    task = Task.objects.get(client_ref=f"test-run:binding:{pinned.pk}")
    assert response["Location"] == f"/admin/tasks/task/{task.pk}/change/"
    assert (task.user, task.points, task.hold_id) == (staff, 0, "")

    wait_for(lambda: Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED)
    task.refresh_from_db()
    assert task.executor == second  # pinned, although gpu-a has the higher priority
    assert len(comfy2.prompts) == 1 and not comfy.prompts
