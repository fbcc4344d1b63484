"""Dispatch claims a run slot with one guarded update of the executor's ``in_flight`` counter;
every way out of ``running`` gives the slot back; the reconciler recounts a counter that drifted."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections

from integrations.models import Executor
from tasks.execution import tasks_reconcile
from tasks.models import Task, TaskStatus
from tasks.services import (
    executors_recount_in_flight,
    task_cancel,
    task_finish,
    task_requeue_or_fail,
    task_submit,
    tasks_dispatch_pending,
)
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor

# These tests examine the queue and the dispatch pass: tasks stay queued at submit (ADR 0018).
pytestmark = pytest.mark.usefixtures("queued_submits")


def in_flight(executor: Executor) -> int:
    return Executor.objects.get(pk=executor.pk).in_flight


@pytest.mark.django_db
def test_each_way_out_of_running_gives_the_slot_back(funded, comfy):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=2)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    tasks = [task_submit(user=funded, action="sleep", params={"seconds": 1}) for _ in range(2)]
    assert tasks_dispatch_pending() == 2
    assert in_flight(executor) == 2
    running = list(Task.objects.filter(status=TaskStatus.RUNNING).order_by("pk"))

    task_finish(task_id=running[0].public_id, status=TaskStatus.SUCCEEDED, attempt=1)
    assert in_flight(executor) == 1
    task_finish(task_id=running[0].public_id, status=TaskStatus.FAILED, attempt=1)  # no-op
    assert in_flight(executor) == 1

    task_requeue_or_fail(
        task_id=running[1].public_id, attempt=1, error_code="EXECUTOR_ERROR", error_message="x"
    )
    requeued = Task.objects.get(pk=running[1].pk)
    assert requeued.status == TaskStatus.QUEUED
    assert in_flight(executor) == 0

    task_cancel(task=requeued)  # a queued task holds no slot
    assert in_flight(executor) == 0
    assert len(tasks) == 2


@pytest.mark.django_db
def test_a_full_executor_is_not_claimed_and_a_canceled_run_frees_it(funded, comfy):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    first = task_submit(user=funded, action="sleep", params={"seconds": 1})
    second = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert tasks_dispatch_pending() == 1
    assert tasks_dispatch_pending() == 0  # full
    assert Task.objects.get(pk=second.pk).status == TaskStatus.QUEUED
    # The canceled run's slot goes straight to the queued task (ADR 0018), no pass needed.
    task_cancel(task=Task.objects.get(pk=first.pk))
    assert Task.objects.get(pk=second.pk).status == TaskStatus.RUNNING
    assert in_flight(executor) == 1
    assert tasks_dispatch_pending() == 0


@pytest.mark.django_db
def test_the_reconciler_recounts_a_drifted_counter(funded, comfy):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=3)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert tasks_dispatch_pending() == 1
    Executor.objects.filter(pk=executor.pk).update(in_flight=3)  # an operator's SQL, say
    assert tasks_dispatch_pending() == 0  # looks full
    assert executors_recount_in_flight() == 1
    assert in_flight(executor) == 1
    assert executors_recount_in_flight() == 0
    Executor.objects.filter(pk=executor.pk).update(in_flight=0)
    assert tasks_reconcile()["inFlightRecounted"] == 1
    assert in_flight(executor) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatchers_never_overfill_an_executor(funded, comfy, comfy2):
    one = make_executor("gpu-1", comfy.url, max_concurrency=3)
    two = make_executor("gpu-2", comfy2.url, max_concurrency=2)
    make_ability("sleep", [one, two], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    for _ in range(20):
        task_submit(user=funded, action="sleep", params={"seconds": 1})
    started: list[int] = []
    errors: list[BaseException] = []

    def dispatch():
        try:
            started.append(tasks_dispatch_pending())
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=dispatch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sum(started) == 5
    for executor, cap in ((one, 3), (two, 2)):
        running = Task.objects.filter(executor=executor, status=TaskStatus.RUNNING).count()
        assert running == cap
        assert in_flight(executor) == cap
