"""Dispatch rules at the service level (no worker: messages stay on the broker)."""

from __future__ import annotations

import pytest

from tasks.models import Task, TaskStatus
from tasks.services import task_submit, tasks_dispatch_pending
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor

# These tests examine the queue and the dispatch pass: tasks stay queued at submit (ADR 0018).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("queued_submits")]


def test_a_long_queue_of_a_busy_ability_does_not_starve_another(funded):
    busy = make_executor("busy", "http://127.0.0.1:9", max_concurrency=1)
    idle = make_executor("idle", "http://127.0.0.1:9", max_concurrency=1)
    make_ability("slow", [busy], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    make_ability("fast", [idle], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    slow = [task_submit(user=funded, action="slow") for _ in range(7)]
    fast = task_submit(user=funded, action="fast")
    # Five candidates per round: the first round sees only "slow" tasks.
    assert tasks_dispatch_pending(limit=5) == 2
    statuses = dict(Task.objects.values_list("public_id", "status"))
    assert statuses[slow[0].public_id] == TaskStatus.RUNNING
    assert statuses[fast.public_id] == TaskStatus.RUNNING
    assert [statuses[t.public_id] for t in slow[1:]] == [TaskStatus.QUEUED] * 6
    assert tasks_dispatch_pending(limit=5) == 0  # nothing frees up, nothing starts


def test_unhealthy_and_disabled_executors_get_no_tasks(funded):
    sick = make_executor("sick", "http://127.0.0.1:9", max_concurrency=5)
    sick.health_status = "unhealthy"
    sick.save(update_fields=["health_status"])
    make_ability("slow", [sick], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    task = task_submit(user=funded, action="slow")
    assert tasks_dispatch_pending() == 0
    sick.health_status = "healthy"
    sick.save(update_fields=["health_status"])
    assert tasks_dispatch_pending() == 1
    task.refresh_from_db()
    assert (task.status, task.executor_id, task.attempts) == (TaskStatus.RUNNING, sick.pk, 1)
