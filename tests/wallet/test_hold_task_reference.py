"""A hold may name only its own user's task (issue 12, item 5: cross-user event injection).

``POST /api/wallet/v1/freeze`` with another user's ``taskId`` used to record the caller's
``wallet.points`` event linked to that task. The wallet now asks the owner lookup the tasks app
registers (``podi.access.owners_of("task", …)``) and refuses with 404 ``WALLET_TASK_NOT_FOUND``.
"""

from __future__ import annotations

import pytest

from integrations.models import Ability
from podi.errors import AppError
from podi.ids import new_id
from podi.realtime.events import emit
from podi.realtime.models import Event
from tasks.models import Task
from tests.wallet.conftest import wallet_snapshot
from wallet.models import Hold, LedgerEntry
from wallet.services import hold_freeze, wallet_grant


def make_task(user) -> Task:
    ability, _ = Ability.objects.get_or_create(code="upscale", defaults={"display_name": "Up"})
    return Task.objects.create(
        public_id=new_id("tsk"), user=user, ability=ability, action="upscale"
    )


@pytest.fixture
def victim_task(owner):
    return make_task(owner)


@pytest.fixture
def funded_outsider(outsider):
    wallet_grant(user=outsider, points=100, reason="seed")
    return outsider


def test_freeze_naming_another_users_task_is_404_and_changes_nothing(
    victim_task, funded_outsider, client_for
):
    before = wallet_snapshot()
    events = Event.objects.count()
    response = client_for(funded_outsider).post(
        "/api/wallet/v1/freeze", {"taskId": victim_task.public_id, "points": 5}
    )
    assert response.status_code == 404
    assert response.json() == {
        "code": "WALLET_TASK_NOT_FOUND",
        "message": "No such task of this user: a hold may name only its own task.",
        "details": {"taskId": victim_task.public_id},
    }
    assert wallet_snapshot() == before
    assert Event.objects.count() == events
    assert not Hold.objects.filter(task_id=victim_task.public_id).exists()
    assert not LedgerEntry.objects.filter(task_id=victim_task.public_id).exists()


def test_staff_and_scoped_keys_may_not_cross_users_either(
    victim_task, funded_outsider, staff_client, service_key, client_for
):
    # Acting for the outsider, nobody may name the owner's task; acting for the owner, they may.
    _, raw = service_key(scopes=["wallet:write"])
    for client in (staff_client, client_for(raw)):
        response = client.post(
            "/api/wallet/v1/freeze",
            {"userId": funded_outsider.pk, "taskId": victim_task.public_id, "points": 5},
        )
        assert response.status_code == 404
        assert response.json()["code"] == "WALLET_TASK_NOT_FOUND"
    wallet_grant(user=victim_task.user, points=10, reason="seed")
    response = staff_client.post(
        "/api/wallet/v1/freeze",
        {"userId": victim_task.user_id, "taskId": victim_task.public_id, "points": 5},
    )
    assert response.status_code == 201


def test_own_tasks_and_outside_references_are_still_fine(owner, funded_outsider, client_for):
    own = make_task(funded_outsider)
    client = client_for(funded_outsider)
    assert (
        client.post("/api/wallet/v1/freeze", {"taskId": own.public_id, "points": 5}).status_code
        == 201
    )
    # A reference that is no PODI task (a partner's own order id) is the caller's business.
    assert (
        client.post("/api/wallet/v1/freeze", {"taskId": "order-77", "points": 5}).status_code == 201
    )


def test_the_service_refuses_too(victim_task, funded_outsider):
    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        hold_freeze(user=funded_outsider, task_id=victim_task.public_id, points=5)
    assert caught.value.code == "WALLET_TASK_NOT_FOUND"
    assert wallet_snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_the_service_refuses_outside_a_transaction_too(outsider, owner):
    # Autocommit: on PostgreSQL the freeze is one statement that checks whose task it is itself
    # (docs/adr/0023-money-moves-in-one-statement.md); refused, it has committed nothing.
    task = make_task(owner)
    wallet_grant(user=outsider, points=100)
    before = wallet_snapshot()
    with pytest.raises(AppError) as caught:
        hold_freeze(user=outsider, task_id=task.public_id, points=5)
    assert caught.value.code == "WALLET_TASK_NOT_FOUND"
    assert wallet_snapshot() == before


def test_task_events_list_only_the_owners_events(victim_task, outsider, owner_client):
    # Even an event already linked to the task from another user's stream (as the old freeze
    # made) is not part of the task's history.
    mine = emit(
        user_id=victim_task.user_id, type="task.status", payload={}, task_id=victim_task.public_id
    )
    emit(user_id=outsider.pk, type="wallet.points", payload={}, task_id=victim_task.public_id)
    response = owner_client.get(f"/api/tasks/v1/{victim_task.public_id}/events")
    assert response.status_code == 200
    assert [e["id"] for e in response.json()["items"]] == [mine["id"]]
