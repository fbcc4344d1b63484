"""Dispatch rules at the service level (no worker: messages stay on the broker)."""

from __future__ import annotations

import threading

import pytest

from tasks.models import Task, TaskStatus
from tasks.services import _PassCoalescer, task_submit, tasks_dispatch_pending
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


# --- Doorbells coalesce (ADR 0030) -------------------------------------------------------------


def test_doorbells_during_a_pass_make_one_more_pass_and_none_is_lost():
    """Doorbells that ring while this process runs a pass take no worker thread and no pass
    of their own: the running pass runs once more after it, which begins after they rang."""
    coalescer = _PassCoalescer(ring_again=lambda: pytest.fail("no pass failed"))
    in_pass, go_on = threading.Event(), threading.Event()
    passes: list[str] = []

    def slow_pass():
        passes.append("pass")
        if len(passes) == 1:
            in_pass.set()
            assert go_on.wait(10)
        return 1

    first = threading.Thread(target=lambda: passes.append(coalescer.ring(slow_pass)))
    first.start()
    assert in_pass.wait(10)
    # Three doorbells while the first pass runs: each returns at once.
    assert [coalescer.ring(slow_pass) for _ in range(3)] == [None, None, None]
    go_on.set()
    first.join(10)
    assert passes == ["pass", "pass", 2]  # one more pass for the three; both passes counted
    assert coalescer.ring(slow_pass) == 1  # idle again: a doorbell runs its own pass


def test_a_failed_pass_rings_again_for_the_doorbells_it_took():
    """A pass that fails does not swallow the doorbells that waited on it: one is sent again."""
    sent: list[str] = []
    coalescer = _PassCoalescer(ring_again=lambda: sent.append("doorbell"))
    in_pass, go_on = threading.Event(), threading.Event()

    def failing_pass():
        in_pass.set()
        assert go_on.wait(10)
        raise RuntimeError("database gone")

    failures: list[BaseException] = []

    def run():
        try:
            coalescer.ring(failing_pass)
        except RuntimeError as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert in_pass.wait(10)
    assert coalescer.ring(failing_pass) is None
    go_on.set()
    thread.join(10)
    assert len(failures) == 1
    assert sent == ["doorbell"]
    assert coalescer.ring(lambda: 0) == 0  # and it is not left marked as running
