"""A finish tells subscribers first: its events are published by the first callbacks of its
commit, before it looks for queued work (and before any doorbell that look may ring), with the
hold settled by id (ADR 0019)."""

from __future__ import annotations

import pytest

from tasks.models import TaskStatus
from tasks.services import task_finish, task_submit
from tests.tasks.conftest import make_ability, make_executor
from wallet.models import Hold

pytestmark = pytest.mark.django_db


def _name(callback) -> str:
    return getattr(callback, "__qualname__", "") or getattr(
        getattr(callback, "func", None), "__qualname__", ""
    )


@pytest.mark.parametrize("status", [TaskStatus.SUCCEEDED, TaskStatus.FAILED])
def test_a_finish_publishes_its_events_before_it_looks_for_queued_work(
    status, funded, comfy, django_capture_on_commit_callbacks, published
):
    make_ability("invert", [make_executor("gpu-1", comfy.url, max_concurrency=1)], points=7)
    task = task_submit(user=funded, action="invert", params={"width": 8, "height": 8})
    assert task.status == TaskStatus.RUNNING
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        task_finish(task_id=task.public_id, status=status, attempt=1)
    names = [_name(callback) for callback in callbacks]
    publishes = [i for i, name in enumerate(names) if name.startswith("publish_on_commit")]
    look = names.index("_dispatch_if_queued")
    assert publishes and max(publishes) < look, names
    # What was published: the task's end and its hold's settlement.
    assert [e["payload"].get("status") for e in published[-2:]] == (
        ["deducted", "succeeded"] if status == TaskStatus.SUCCEEDED else ["released", "failed"]
    )
    hold = Hold.objects.get(public_id=task.hold_id)
    assert hold.status == ("confirmed" if status == TaskStatus.SUCCEEDED else "released")
