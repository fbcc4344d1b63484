"""Acceptance test of #13: 200 tasks submitted at once to two executors each end exactly once,
with their holds settled and the wallet invariants intact."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from podi.realtime.models import Event
from tasks.models import Task, TaskAsset, TaskStatus
from tests.tasks.conftest import make_ability, make_executor, wait_for
from tests.wallet.invariants import assert_wallet_invariants
from wallet.models import Hold, LedgerEntry
from wallet.services import wallet_grant

pytestmark = pytest.mark.django_db(transaction=True)

TASKS = 200


def test_two_hundred_tasks_at_once_on_two_executors_end_once_each(
    worker, comfy, comfy2, owner, api
):
    first = make_executor("gpu-1", comfy.url, max_concurrency=6)
    second = make_executor("gpu-2", comfy2.url, max_concurrency=6)
    make_ability("invert", [first, second], points=3)
    wallet_grant(user=owner, points=3 * TASKS + 50, reason="t", reference="burst")

    def submit(index: int):
        return api(owner).post(
            "/api/tasks/v1/submit",
            json={
                "action": "invert",
                "params": {"width": 4, "height": 4, "color": index},
                "clientRef": f"b{index}",
            },
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(submit, range(TASKS)))
    assert [r.status_code for r in responses].count(202) == TASKS, [
        r.text for r in responses if r.status_code != 202
    ][:3]
    task_ids = [r.json()["taskId"] for r in responses]

    def finished() -> bool:
        return not Task.objects.exclude(
            status__in=[TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED]
        ).exists()

    wait_for(finished, timeout=300, interval=0.5)
    tasks = list(Task.objects.filter(public_id__in=task_ids))
    assert len(tasks) == TASKS
    assert {t.status for t in tasks} == {TaskStatus.SUCCEEDED}, [
        (t.status, t.error_code, t.error_message) for t in tasks if t.status != "succeeded"
    ][:3]
    # Both executors took work, and no prompt was sent twice.
    assert {t.executor_id for t in tasks} == {first.pk, second.pk}
    assert len(comfy.prompts) + len(comfy2.prompts) == TASKS
    assert {t.external_id for t in tasks} == set(comfy.prompts) | set(comfy2.prompts)
    # Exactly one terminal event and one confirm per task; every hold confirmed once.
    finals = Event.objects.filter(task_public_id__in=task_ids, type="task.status").filter(
        payload__status="succeeded"
    )
    assert finals.count() == TASKS
    assert LedgerEntry.objects.filter(task_id__in=task_ids, type="confirm").count() == TASKS
    assert set(
        Hold.objects.filter(public_id__in=[t.hold_id for t in tasks]).values_list(
            "status", flat=True
        )
    ) == {"confirmed"}
    account = assert_wallet_invariants(owner)
    assert (account.balance, account.frozen) == (50, 0)
    outputs = TaskAsset.objects.filter(task__in=tasks, kind=TaskAsset.Kind.OUTPUT)
    assert outputs.count() == TASKS
    assert outputs.values("task_id").distinct().count() == TASKS
