"""A queued task's start (ADR 0031): on PostgreSQL one statement locks the task, claims the
slot, extends the hold and moves the task to running; a success frees its slot in its own
statement and hands it to the first in line after its commit. What the statement cannot decide
(a hold that lapsed) takes the step-by-step start, which fails the task; nothing is half-done."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from integrations.models import Executor
from podi.realtime.models import Event
from tasks.models import Task, TaskStatus
from tasks.services import task_finish, task_submit, tasks_dispatch_pending
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor, row_held
from tests.tasks.test_statement_budget import StatementLog
from wallet.models import Account, Hold

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("queued_submits")]


def sleep_ability(*executors, **options):
    return make_ability(
        "sleep", list(executors), graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=3, **options
    )


def in_flight(executor: Executor) -> int:
    return Executor.objects.get(pk=executor.pk).in_flight


def statuses(task: Task) -> list[str]:
    return list(
        Event.objects.filter(task_public_id=task.public_id, type="task.status")
        .order_by("seq")
        .values_list("payload__status", flat=True)
    )


@contextlib.contextmanager
def counted():
    log = StatementLog()
    connection.execute_wrappers.append(log)
    try:
        yield log.statements
    finally:
        connection.execute_wrappers.remove(log)


def test_a_pass_starts_a_queued_task_whole(funded, comfy):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=2)
    sleep_ability(executor, run_timeout=120)
    task = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert tasks_dispatch_pending() == 1
    task.refresh_from_db()
    assert (task.status, task.attempts, task.executor_id) == ("running", 1, executor.pk)
    assert task.binding_id is not None and task.dispatched_at is not None
    assert task.run_deadline == task.dispatched_at + timedelta(seconds=120)
    assert "notBefore" not in task.executor_state and task.external_id == ""
    assert in_flight(executor) == 1
    # The hold outlives the run it started, and the stream saw the start.
    hold = Hold.objects.get(public_id=task.hold_id)
    assert hold.status == "held" and hold.expires_at > task.run_deadline
    assert statuses(task) == ["queued", "running"]


def test_a_queued_task_whose_hold_lapsed_fails_and_keeps_no_slot(funded, comfy):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    sleep_ability(executor)
    task = task_submit(user=funded, action="sleep", params={"seconds": 1})
    Hold.objects.filter(public_id=task.hold_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert tasks_dispatch_pending() == 0
    task.refresh_from_db()
    assert (task.status, task.error_code) == ("failed", "TASK_HOLD_EXPIRED")
    assert in_flight(executor) == 0  # the claimed slot went back with the failure
    assert Hold.objects.get(public_id=task.hold_id).status == "released"
    account = Account.objects.get(user=funded)
    assert (account.balance, account.frozen) == (1000, 0)
    assert statuses(task) == ["queued", "failed"]  # never "running"


def test_a_task_not_yet_due_is_left_queued(funded, comfy):
    executor = make_executor("gpu-1", comfy.url)
    sleep_ability(executor)
    task = task_submit(user=funded, action="sleep", params={"seconds": 1})
    later = timezone.now().timestamp() + 60
    Task.objects.filter(pk=task.pk).update(executor_state={"notBefore": later})
    assert tasks_dispatch_pending() == 0
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED
    assert in_flight(executor) == 0
    Task.objects.filter(pk=task.pk).update(executor_state={"notBefore": later - 120})
    assert tasks_dispatch_pending() == 1
    assert Task.objects.get(pk=task.pk).executor_state == {}


def test_a_full_executor_is_passed_for_the_next_binding(funded, comfy, comfy2):
    full = make_executor("gpu-1", comfy.url, max_concurrency=1)
    free = make_executor("gpu-2", comfy2.url, max_concurrency=1)
    sleep_ability(full, free)
    Executor.objects.filter(pk=full.pk).update(in_flight=1)  # someone else's run
    task = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert tasks_dispatch_pending() == 1
    task.refresh_from_db()
    assert (task.status, task.executor_id) == (TaskStatus.RUNNING, free.pk)
    assert (in_flight(full), in_flight(free)) == (1, 1)


@pytest.mark.postgres  # row locks: SQLite locks the whole database for any writer
def test_a_task_another_pass_is_starting_is_skipped_not_waited_for(funded, comfy):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    sleep_ability(executor)
    first = task_submit(user=funded, action="sleep", params={"seconds": 1})
    second = task_submit(user=funded, action="sleep", params={"seconds": 1})
    with row_held(first):
        assert tasks_dispatch_pending() == 1  # the next in line, at once
    assert Task.objects.get(pk=first.pk).status == TaskStatus.QUEUED
    assert Task.objects.get(pk=second.pk).status == TaskStatus.RUNNING
    assert in_flight(executor) == 1


def test_a_success_hands_its_slot_on_in_a_few_statements(funded, comfy):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    sleep_ability(executor)
    running = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert tasks_dispatch_pending() == 1
    waiting = task_submit(user=funded, action="sleep", params={"seconds": 1})
    with counted() as statements:
        task_finish(task_id=running.public_id, status=TaskStatus.SUCCEEDED, attempt=1)
    assert Task.objects.get(pk=running.pk).status == TaskStatus.SUCCEEDED
    waiting.refresh_from_db()
    assert (waiting.status, waiting.executor_id) == (TaskStatus.RUNNING, executor.pk)
    assert in_flight(executor) == 1
    assert statuses(waiting) == ["queued", "running"]
    account = Account.objects.get(user=funded)
    assert (account.balance, account.frozen) == (1000 - 6, 3)
    if connection.vendor == "postgresql":
        # The success (its events included), the first in line, the start and its event.
        listing = "\n".join(sql[:120] for sql in statements)
        assert len(statements) <= 4, listing
