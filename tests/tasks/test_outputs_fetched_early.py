"""Outputs fetched early (docs/adr/0026-outputs-fetched-early.md): a followed ComfyUI prompt's
outputs are fetched as soon as their node reports them (``executed`` on the session's socket),
while the rest of the prompt runs; the conclusion after ``/history`` takes them instead of
fetching again. What was fetched for a prompt that then fails is staged and swept."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from media_app.models import MediaObject, MediaStatus
from media_app.services import media_open
from media_app.storage import get_backend
from podi.reconcile import run_pass
from tasks.models import Task
from tests.tasks.conftest import make_ability, make_executor, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# The image is saved first, then the prompt sleeps: node 2's output exists a second before the
# prompt ends.
SAVE_THEN_SLEEP = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "early"}},
    "3": {"class_type": "PodiTestSleep", "inputs": {"image": ["1", 0], "seconds": 1, "steps": 4}},
}  # fmt: skip


def _submit(comfy, api, user) -> str:
    """Submit one task of an ability bound to ``SAVE_THEN_SLEEP`` on ``comfy``."""
    make_ability(
        "early",
        [make_executor("gpu-1", comfy.url)],
        graph=SAVE_THEN_SLEEP,
        schema={"type": "object"},
        points=1,
    )
    response = api(user).post("/api/tasks/v1/submit", json={"action": "early"})
    assert response.status_code == 202, response.text
    return response.json()["taskId"]


def _done(task_id: str) -> Task:
    return wait_for(
        lambda: (task := Task.objects.get(public_id=task_id)).is_terminal and task, timeout=30
    )


def test_an_output_is_fetched_while_the_prompt_runs_and_only_once(worker, comfy, funded, api):
    task_id = _submit(comfy, api, funded)
    prefix = f"results/{funded.pk}/{task_id}/"
    # The bytes are in storage while the prompt still sleeps (nothing names them yet).
    (early,) = wait_for(lambda: get_backend().list(prefix), timeout=20)
    assert Task.objects.get(public_id=task_id).status == "running"
    assert not MediaObject.objects.filter(task_id=task_id).exists()

    task = _done(task_id)
    assert task.status == "succeeded", task.error_message
    # One download, before the prompt's end was confirmed from /history.
    requests = comfy.requests
    views = [i for i, r in enumerate(requests) if r.api_path == "/view"]
    (confirm,) = [i for i, r in enumerate(requests) if r.api_path == f"/history/{task.external_id}"]
    assert len(views) == 1 and views[0] < confirm
    row = MediaObject.objects.get(task_id=task_id)
    assert (row.object_key, row.status, row.width) == (early.key, MediaStatus.UPLOADED, 8)
    with media_open(object_key=row.object_key) as stream:
        data = stream.read()
    assert hashlib.sha256(data).hexdigest() == row.sha256
    (saved,) = comfy.wait_for_history(task.external_id)["outputs"]["2"]["images"]
    assert Path(comfy.output_dir, saved["subfolder"], saved["filename"]).read_bytes() == data


def test_what_was_fetched_for_a_prompt_that_then_fails_is_swept(worker, comfy, funded, api):
    comfy.fail_next_prompt_with = {"message": "out of memory", "node_id": "3"}
    task_id = _submit(comfy, api, funded)
    task = _done(task_id)
    assert (task.status, task.error_code) == ("failed", "EXECUTION_ERROR")
    assert len(comfy.requests_to("/view")) == 1  # fetched early, after node 2 ran
    (row,) = wait_for(lambda: list(MediaObject.objects.filter(task_id=task_id)), timeout=10)
    assert row.status == MediaStatus.STAGED
    assert run_pass()["tasks.actors.reconcile_tasks"]["stagedMediaSwept"] == 1
    assert not MediaObject.objects.filter(task_id=task_id).exists()
    assert get_backend().list(f"results/{funded.pk}/{task_id}/") == []
