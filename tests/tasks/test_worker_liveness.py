"""A worker process killed mid-task: its liveness lease lapses and the reconciler hands its running
attempt to another worker after WORKER_LEASE_TTL, not after the 60 s stale-heartbeat limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import dramatiq
import pytest
from django.utils import timezone

from podi.models import Lease
from podi.realtime.models import Event
from podi.services import lease_acquire
from tasks.execution import HEARTBEAT_STALE, tasks_resume_orphaned, tasks_resume_silent
from tasks.models import Task, TaskStatus
from tasks.services import task_run_claim, task_submit, tasks_dispatch_pending
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor, wait_for
from tests.tasks.test_recovery import ROOT, database_url
from wallet.models import LedgerEntry

# These tests examine the queue and the dispatch pass: tasks stay queued at submit (ADR 0018).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("queued_submits")]

VICTIM = """
import django; django.setup()
from podi.runtime import WorkerLiveness
WorkerLiveness().after_worker_boot(None, None)  # what a worker process does at boot
from tasks.execution import task_run
task_run(task_id={task_id!r}, attempt=1)
"""


def test_dead_workers_attempt_is_resumed_once_its_lease_lapses(
    comfy, funded, api, request, settings
):
    settings.WORKER_LEASE_TTL = 3
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=6)
    task_id = (
        api(funded)
        .post("/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 4}})
        .json()["taskId"]
    )
    assert tasks_dispatch_pending() == 1
    dramatiq.get_broker().flush_all()  # the message went to the worker that is about to die
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "PUBLIC_BASE_URL": settings.PUBLIC_BASE_URL,
        "WORKER_LEASE_TTL": "3",
    }
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM.format(task_id=task_id)], cwd=ROOT, env=env
    )
    try:
        wait_for(lambda: comfy.queue_snapshot()["queue_running"], timeout=20)
        # ComfyUI has the prompt whose id the attempt saved (nothing is saved after the POST).
        wait_for(lambda: Task.objects.get(public_id=task_id).external_id in comfy.prompts)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    task = Task.objects.get(public_id=task_id)
    holder = task.executor_state["worker"]
    assert holder.split(":")[1] == str(victim.pid)
    assert Lease.objects.get(name=f"worker:{holder}").holder == holder
    # Another worker may not take an attempt whose worker is alive (a duplicate message).
    assert task_run_claim(task_id=task_id, attempt=1, worker="other:1:abc") is False
    assert tasks_resume_orphaned() == 0  # its lease has not lapsed yet

    request.getfixturevalue("worker")  # the live worker the attempt goes to
    killed = time.monotonic()
    wait_for(lambda: tasks_resume_orphaned() == 1, timeout=10, interval=0.2)
    waited = time.monotonic() - killed
    assert waited < HEARTBEAT_STALE.total_seconds() / 4, waited
    assert tasks_resume_orphaned() == 0  # handed over once
    assert tasks_resume_silent() == 0
    wait_for(lambda: Task.objects.get(public_id=task_id).status == TaskStatus.SUCCEEDED, timeout=20)
    task = Task.objects.get(public_id=task_id)
    assert task.attempts == 1
    assert task.executor_state["worker"] != holder  # resumed by the live worker
    assert len(comfy.prompts) == 1  # followed, not resubmitted
    assert LedgerEntry.objects.filter(task_id=task_id, type="confirm").count() == 1
    finals = Event.objects.filter(
        task_public_id=task_id, type="task.status", payload__status="succeeded"
    )
    assert finals.count() == 1


def test_a_claim_takes_over_only_from_a_dead_worker(funded, comfy, settings):

    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=6)

    task = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert tasks_dispatch_pending() == 1
    assert task_run_claim(task_id=task.public_id, attempt=1, worker="a:1:x") is True
    lease_acquire(name="worker:a:1:x", holder="a:1:x", ttl=30)
    assert task_run_claim(task_id=task.public_id, attempt=1, worker="b:2:y") is False
    assert task_run_claim(task_id=task.public_id, attempt=2, worker="b:2:y") is False  # stale
    Lease.objects.filter(name="worker:a:1:x").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert task_run_claim(task_id=task.public_id, attempt=1, worker="b:2:y") is True
    assert Task.objects.get(pk=task.pk).executor_state["worker"] == "b:2:y"


def test_a_silent_attempt_of_a_live_worker_is_released_to_any_worker(funded, comfy):
    """A run that died inside a live worker (a database outage, say) stops beating; once the
    heartbeat is stale the reconciler hands the attempt to whichever worker takes the message,
    not only to the holder (fleet fault 4 left tasks running until their timeout)."""

    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=6)
    task = task_submit(user=funded, action="sleep", params={"seconds": 1})
    assert tasks_dispatch_pending() == 1
    assert task_run_claim(task_id=task.public_id, attempt=1, worker="a:1:x") is True
    lease_acquire(name="worker:a:1:x", holder="a:1:x", ttl=300)  # the holder's process lives on
    Task.objects.filter(pk=task.pk).update(
        heartbeat_at=timezone.now() - HEARTBEAT_STALE - timedelta(seconds=1)
    )
    assert task_run_claim(task_id=task.public_id, attempt=1, worker="b:2:y") is False
    assert tasks_resume_orphaned() == 0  # its worker is alive
    assert tasks_resume_silent() == 1
    assert tasks_resume_silent() == 0  # handed over once
    assert task_run_claim(task_id=task.public_id, attempt=1, worker="b:2:y") is True
    assert Task.objects.get(pk=task.pk).executor_state["worker"] == "b:2:y"


def test_a_run_message_lost_with_the_broker_is_rung_again_after_the_lease_ttl(
    funded, comfy, settings, worker
):
    """Fleet fault 5: a run message sent while Redis was down (or lost with its queues) leaves
    an attempt running that no worker claimed; the reconciler rings it again once it is
    WORKER_LEASE_TTL old, not after the 60 s HEARTBEAT_STALE, and it runs once."""

    settings.WORKER_LEASE_TTL = 3
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=6)
    worker.pause()
    try:
        task = task_submit(user=funded, action="sleep", params={"seconds": 0.2})
        assert tasks_dispatch_pending() == 1
        dramatiq.get_broker().flush_all()  # the doorbells are lost
        assert tasks_resume_orphaned() == 0  # young: its message may still be on its way
        Task.objects.filter(pk=task.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=4))
        assert tasks_resume_orphaned() == 1
        assert tasks_resume_orphaned() == 0  # rung once per WORKER_LEASE_TTL
    finally:
        worker.resume()
    wait_for(lambda: Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED, timeout=20)
    task = Task.objects.get(pk=task.pk)
    assert task.attempts == 1
    assert len(comfy.prompts) == 1
