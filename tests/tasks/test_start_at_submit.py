"""A task starts in its own submit when its executor has a free slot nobody queued waits for
(ADR 0018): never ahead of a queued task, never past ``maxConcurrency``, with a hold that
outlives the binding it started on, and the stream's usual ``queued`` → ``running``."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import timedelta

import pytest
from django.db import close_old_connections, connection

from integrations.models import Executor
from integrations.selectors import catalog_changed
from podi.realtime.models import Event
from tasks.models import Task, TaskStatus
from tasks.services import task_cancel, task_finish, task_submit, tasks_dispatch_pending
from tests.tasks.conftest import (
    SLEEP_GRAPH,
    SLEEP_SCHEMA,
    add_binding,
    make_ability,
    make_executor,
    row_held,
)
from wallet.models import Hold
from wallet.services import holds_expire, wallet_grant

pytestmark = pytest.mark.django_db(transaction=True)


def sleep_ability(*executors, **options):
    return make_ability(
        "sleep", list(executors), graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=3, **options
    )


def test_a_free_slot_starts_the_task_in_its_submit(funded, comfy, api):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=2)
    sleep_ability(executor)
    response = api(funded).post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 1}}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "running"
    task = Task.objects.get(public_id=body["taskId"])
    assert (task.status, task.attempts, task.executor_id) == ("running", 1, executor.pk)
    assert task.run_deadline is not None and task.dispatched_at is not None
    assert Executor.objects.get(pk=executor.pk).in_flight == 1
    # The stream sees what every task shows: queued, then running, on consecutive seqs.
    events = list(
        Event.objects.filter(task_public_id=task.public_id, type="task.status").order_by("seq")
    )
    assert [e.payload["status"] for e in events] == ["queued", "running"]
    assert events[1].seq == events[0].seq + 1
    # No dispatch pass has anything to start (the run message went out on commit; the worker
    # running it to success is tests/tasks/test_comfyui_flow.py's happy path).
    assert tasks_dispatch_pending() == 0


def test_a_queued_task_is_first_to_a_free_slot(funded, comfy, settings):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    sleep_ability(executor)
    settings.TASK_START_AT_SUBMIT = False
    waiting = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert waiting.status == TaskStatus.QUEUED
    settings.TASK_START_AT_SUBMIT = True
    # The slot is free, but a queued task could use it: the new task queues behind it.
    later = task_submit(user=funded, action="sleep", params={"seconds": 1}, priority=5)
    assert later.status == TaskStatus.QUEUED
    assert Executor.objects.get(pk=executor.pk).in_flight == 0
    # The pass starts by priority, as always (the later task asked for a higher one).
    assert tasks_dispatch_pending() == 1
    assert Task.objects.get(pk=later.pk).status == TaskStatus.RUNNING
    assert Task.objects.get(pk=waiting.pk).status == TaskStatus.QUEUED


def test_a_full_executor_queues_the_task(funded, comfy):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    sleep_ability(executor)
    first = task_submit(user=funded, action="sleep", params={"seconds": 1})
    second = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert (first.status, second.status) == (TaskStatus.RUNNING, TaskStatus.QUEUED)
    assert Executor.objects.get(pk=executor.pk).in_flight == 1
    # The slot comes back with the first task's end, and the queued one takes it at once.
    task_finish(task_id=first.public_id, status=TaskStatus.SUCCEEDED, attempt=1)
    assert Task.objects.get(pk=second.pk).status == TaskStatus.RUNNING
    assert Executor.objects.get(pk=executor.pk).in_flight == 1


def test_a_finish_hands_its_slot_to_the_first_in_line(funded, teammate, comfy, comfy2):
    one, other = (
        make_executor("gpu-1", comfy.url, max_concurrency=1),
        make_executor("gpu-2", comfy2.url, max_concurrency=1),
    )
    sleep_ability(one)
    make_ability("elsewhere", [other], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=0)
    wallet_grant(user=teammate, points=100, reason="test")
    running = task_submit(user=funded, action="sleep", params={"seconds": 1})
    older = task_submit(user=funded, action="sleep", params={"seconds": 1})
    urgent = task_submit(user=teammate, action="sleep", params={"seconds": 1}, priority=5)
    busy = task_submit(user=funded, action="elsewhere", params={"seconds": 1})
    unrelated = task_submit(user=funded, action="elsewhere", params={"seconds": 1})
    assert [t.status for t in (running, older, urgent, busy, unrelated)] == [
        "running",
        "queued",
        "queued",
        "running",
        "queued",
    ]
    # No dispatch pass: the finish itself starts the queued task first in line for its slot
    # (priority first), in its own transaction; a task of another executor is not touched.
    task_finish(task_id=running.public_id, status=TaskStatus.SUCCEEDED, attempt=1)
    current = {t.pk: Task.objects.get(pk=t.pk) for t in (older, urgent, unrelated)}
    assert current[urgent.pk].status == TaskStatus.RUNNING
    assert current[urgent.pk].executor_id == one.pk
    assert current[older.pk].status == TaskStatus.QUEUED
    assert current[unrelated.pk].status == TaskStatus.QUEUED
    assert Executor.objects.get(pk=one.pk).in_flight == 1
    statuses = list(
        Event.objects.filter(task_public_id=urgent.public_id, type="task.status")
        .order_by("seq")
        .values_list("payload__status", flat=True)
    )
    assert statuses == ["queued", "running"]
    # A canceled run hands its slot on the same way.
    task_cancel(task=Task.objects.get(pk=urgent.pk))
    assert Task.objects.get(pk=older.pk).status == TaskStatus.RUNNING
    assert Executor.objects.get(pk=one.pk).in_flight == 1


def test_an_unhealthy_or_disabled_executor_is_never_started_from_the_cache(funded, comfy, comfy2):
    sick, well = make_executor("sick", comfy.url), make_executor("well", comfy2.url)
    ability = sleep_ability(sick)
    add_binding(ability, well, priority=-1)
    task_submit(user=funded, action="sleep", params={"seconds": 1})  # caches the catalog
    # Changed behind the cache's back (no signal): the claim re-checks the executor row.
    Executor.objects.filter(pk=sick.pk).update(health_status="unhealthy")
    task = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert (task.status, task.executor_id) == (TaskStatus.RUNNING, well.pk)
    Executor.objects.filter(pk=well.pk).update(enabled=False)
    task = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert task.status == TaskStatus.QUEUED


def test_the_hold_outlives_the_binding_the_task_started_on(funded, comfy, comfy2):
    quick, slow = make_executor("quick", comfy.url), make_executor("slow", comfy2.url)
    ability = make_ability("invert", [quick], queue_timeout=5, run_timeout=5, max_attempts=1)
    quick.enabled = False  # the operator took the quick one out: the submit starts the slow one
    quick.save()
    add_binding(ability, slow, priority=-1, max_attempts=1, queue_timeout=5, run_timeout=100_000)
    task = task_submit(user=funded, action="invert", params={})
    assert (task.status, task.executor_id, task.run_timeout) == ("running", slow.pk, 100_000)
    hold = Hold.objects.get(public_id=task.hold_id)
    assert hold.expires_at > task.run_deadline + timedelta(seconds=60)
    assert holds_expire(now=task.run_deadline + timedelta(seconds=60)) == 0
    assert Hold.objects.get(pk=hold.pk).status == "held"


def test_concurrent_submits_never_overfill_an_executor(funded, comfy, comfy2):
    one = make_executor("gpu-1", comfy.url, max_concurrency=3)
    two = make_executor("gpu-2", comfy2.url, max_concurrency=2)
    make_ability("sleep", [one, two], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    statuses: list[str] = []
    errors: list[BaseException] = []

    def submit():
        try:
            for _ in range(4):
                statuses.append(
                    task_submit(user=funded, action="sleep", params={"seconds": 1}).status
                )
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(statuses) == 16
    # A submit that finds the executor's row locked by another submit's claim queues rather
    # than wait (ADR 0030), so the submits start at most the 5 free slots; the dispatch pass
    # their doorbells ring fills the rest, and never more.
    assert 1 <= statuses.count(TaskStatus.RUNNING) <= 5
    tasks_dispatch_pending()
    for executor, cap in ((one, 3), (two, 2)):
        running = Task.objects.filter(executor=executor, status=TaskStatus.RUNNING).count()
        assert running == cap
        assert Executor.objects.get(pk=executor.pk).in_flight == cap


@pytest.mark.postgres  # row locks: SQLite locks the whole database for any writer
def test_a_submit_never_waits_for_another_transaction_on_the_executor_row(funded, comfy):
    """The claim at submit skips an executor row another transaction holds (a finish giving
    its slot back, another submit's claim): the task queues for the dispatch pass at once,
    instead of every submit of a burst waiting in line on that row (ADR 0030)."""
    executor = make_executor("gpu-1", comfy.url, max_concurrency=4)
    sleep_ability(executor)
    with row_held(executor):
        began = time.monotonic()
        task = task_submit(user=funded, action="sleep", params={"seconds": 1})
        waited = time.monotonic() - began
    assert task.status == TaskStatus.QUEUED
    assert waited < 5  # it did not wait for the holder (which lets go only when told)
    assert Executor.objects.get(pk=executor.pk).in_flight == 0
    assert tasks_dispatch_pending() == 1
    task.refresh_from_db()
    assert (task.status, task.executor_id) == (TaskStatus.RUNNING, executor.pk)
    assert Executor.objects.get(pk=executor.pk).in_flight == 1


def test_a_finish_hands_its_slot_on_without_touching_another_executor(funded, comfy, comfy2):
    """The freed slot goes to the first in line for that executor, on that executor: the
    finish never locks a second executor's row after the wallet's (a submit holding that row
    and waiting for the wallet deadlocked with it, seen in the 200-task burst). On SQLite, which
    has no row locks, the placement alone: the preferred executor is free and not taken."""
    freed = make_executor("gpu-1", comfy.url, max_concurrency=1)
    preferred = make_executor("gpu-2", comfy2.url, max_concurrency=4, enabled=False)
    ability = sleep_ability(freed)
    add_binding(ability, preferred, priority=10)
    running = task_submit(user=funded, action="sleep", params={"seconds": 1})
    waiting = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert (running.status, waiting.status) == (TaskStatus.RUNNING, TaskStatus.QUEUED)
    Executor.objects.filter(pk=preferred.pk).update(enabled=True)
    catalog_changed()
    held = (
        row_held(preferred)  # a submit that claimed it, not yet committed
        if connection.vendor == "postgresql"
        else contextlib.nullcontext()
    )
    with held:
        began = time.monotonic()
        task_finish(task_id=running.public_id, status=TaskStatus.SUCCEEDED, attempt=1)
        took = time.monotonic() - began
    assert took < 5  # it never waited for the other executor's row
    waiting.refresh_from_db()
    assert (waiting.status, waiting.executor_id) == (TaskStatus.RUNNING, freed.pk)
    assert Executor.objects.get(pk=freed.pk).in_flight == 1
    assert Executor.objects.get(pk=preferred.pk).in_flight == 0
