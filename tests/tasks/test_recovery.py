"""A worker killed mid-task: the reconciler resumes the attempt and finishes it exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dramatiq
import httpx
import pytest
from django.db import connection
from django.utils import timezone

from podi.realtime.models import Event
from tasks.execution import task_run, tasks_resume_silent
from tasks.models import Task, TaskStatus
from tasks.services import task_submit, tasks_dispatch_pending
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
        # ComfyUI has the prompt whose id the attempt saved (nothing is saved after the POST).
        wait_for(lambda: Task.objects.get(public_id=task_id).external_id in comfy.prompts)
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


def test_a_saved_prompt_id_comfyui_never_got_is_submitted_afresh(comfy, funded):
    """A worker that died between saving the prompt id and its POST: the resumed attempt asks
    ComfyUI, finds nothing, and submits once; no prompt runs twice."""
    make_ability(
        "sleep", [make_executor("gpu-1", comfy.url)], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA
    )
    task = task_submit(user=funded, action="sleep", params={"seconds": 0.1})
    assert tasks_dispatch_pending() == 1
    dramatiq.get_broker().flush_all()  # the run message went to a worker that died
    Task.objects.filter(pk=task.pk).update(
        external_id="never-sent",
        executor_state={"clientId": "gone", "submitted": False, "nodes": ["1"]},
    )
    assert task_run(task_id=task.public_id, attempt=1) == "following"
    wait_for(lambda: Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED, timeout=20)
    assert list(comfy.prompts) == [Task.objects.get(pk=task.pk).external_id]
    assert "never-sent" not in comfy.prompts


def test_a_saved_prompt_id_comfyui_has_is_followed_not_sent_again(comfy, funded):
    """A worker that died right after ComfyUI accepted its POST: the resumed attempt finds the
    prompt on ComfyUI and follows it; ComfyUI never gets a second prompt for the attempt."""
    make_ability(
        "sleep", [make_executor("gpu-1", comfy.url)], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA
    )
    task = task_submit(user=funded, action="sleep", params={"seconds": 0.3})
    assert tasks_dispatch_pending() == 1
    dramatiq.get_broker().flush_all()  # the run message went to a worker that died
    accepted = httpx.post(
        f"{comfy.url}/prompt",
        json={
            "prompt": {
                "1": {"class_type": "PodiTestSleep", "inputs": {"seconds": 0.3, "steps": 3}}
            },
            "client_id": "gone",
            "prompt_id": "accepted-1",
        },
        timeout=10,
    )
    assert accepted.status_code == 200, accepted.text
    Task.objects.filter(pk=task.pk).update(
        external_id="accepted-1",
        executor_state={"clientId": "gone", "submitted": False, "nodes": ["1"]},
    )
    assert task_run(task_id=task.public_id, attempt=1) == "following"
    wait_for(lambda: Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED, timeout=20)
    assert list(comfy.prompts) == ["accepted-1"]
