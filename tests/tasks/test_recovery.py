"""A worker killed mid-task: the reconciler resumes the attempt and finishes it exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
from django.db import connection
from django.utils import timezone

from podi.realtime.models import Event
from tasks.execution import tasks_resume_silent
from tasks.models import Task, TaskStatus
from tasks.services import tasks_dispatch_pending
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor, wait_for
from wallet.models import LedgerEntry
from wallet.selectors import account_for_user

# These tests examine the queue and the dispatch pass: tasks stay queued at submit (ADR 0018).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("queued_submits")]
ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    auth = settings["USER"] + (f":{settings['PASSWORD']}" if settings["PASSWORD"] else "")
    return f"postgres://{auth}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{settings['NAME']}"


def test_killed_worker_is_resumed_and_finishes_once(comfy, funded, api, request, settings):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=6)
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 2.5}}
    ).json()["taskId"]
    assert tasks_dispatch_pending() == 1
    dramatiq.get_broker().flush_all()  # the message went to a worker that is about to die
    task = Task.objects.get(public_id=task_id)
    assert (task.status, task.attempts) == (TaskStatus.RUNNING, 1)

    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "PUBLIC_BASE_URL": settings.PUBLIC_BASE_URL,
    }
    code = (
        "import django; django.setup(); from tasks.execution import task_run; "
        f"task_run(task_id={task_id!r}, attempt=1)"
    )
    victim = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    try:
        wait_for(lambda: comfy.queue_snapshot()["queue_running"], timeout=20)
        wait_for(lambda: Task.objects.get(public_id=task_id).executor_state.get("submitted"))
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    assert Task.objects.get(public_id=task_id).status == TaskStatus.RUNNING

    request.getfixturevalue("worker")
    Task.objects.filter(public_id=task_id).update(
        heartbeat_at=timezone.now() - timedelta(minutes=2)
    )
    assert tasks_resume_silent() == 1
    assert tasks_resume_silent() == 0  # the same silent attempt is handed over only once
    wait_for(lambda: Task.objects.get(public_id=task_id).status == TaskStatus.SUCCEEDED, timeout=20)
    task = Task.objects.get(public_id=task_id)
    assert task.attempts == 1
    assert len(comfy.prompts) == 1  # followed, not resubmitted
    assert LedgerEntry.objects.filter(task_id=task_id, type="confirm").count() == 1
    finals = Event.objects.filter(
        task_public_id=task.public_id, type="task.status", payload__status="succeeded"
    )
    assert finals.count() == 1
    account = account_for_user(funded)
    assert (account.balance, account.frozen) == (994, 0)
