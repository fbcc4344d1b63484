"""100 concurrent submits (and cancels) through real HTTP keep invariants 1–3."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.models import Task, TaskStatus
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor
from tests.wallet.invariants import assert_wallet_invariants
from wallet.models import Hold
from wallet.services import wallet_grant

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_submits_and_cancels_keep_the_invariants(owner, api):
    # Capacity 0: nothing is dispatched, so only submit and cancel race on the hot account.
    executor = make_executor("gpu-1", "http://127.0.0.1:9", max_concurrency=1, enabled=True)
    executor.health_status = "unhealthy"
    executor.save(update_fields=["health_status"])
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=7)
    wallet_grant(user=owner, points=7 * 90, reason="t", reference="c")  # room for 90 of 100

    def submit(index: int):
        client = api(owner)
        return client.post(
            "/api/tasks/v1/submit", json={"action": "sleep", "clientRef": f"n{index}"}
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(submit, range(100)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(202) == 90
    assert codes.count(402) == 10
    assert Task.objects.count() == 90
    assert Hold.objects.filter(status="held").count() == 90
    account = assert_wallet_invariants(owner)
    assert (account.balance, account.frozen) == (0, 630)

    accepted = [r.json()["taskId"] for r in responses if r.status_code == 202]

    def cancel(task_id: str):
        return api(owner).post(f"/api/tasks/v1/{task_id}/cancel").status_code

    # Every task canceled twice at once: exactly one cancel wins, the other gets 409.
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(cancel, accepted[:30] + accepted[:30]))
    assert results.count(200) == 30
    assert results.count(409) == 30
    account = assert_wallet_invariants(owner)
    assert (account.balance, account.frozen) == (210, 420)
    # Invariant 3: one terminal state each, and a hold confirmed iff succeeded (none here).
    assert Task.objects.filter(status=TaskStatus.CANCELED).count() == 30
    for task in Task.objects.all():
        hold = Hold.objects.get(public_id=task.hold_id)
        expected = "released" if task.status == TaskStatus.CANCELED else "held"
        assert hold.status == expected
