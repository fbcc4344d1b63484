from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tests.wallet.conftest import wallet_snapshot
from tests.wallet.invariants import assert_wallet_invariants
from wallet.models import Account, Hold, LedgerEntry
from wallet.services import hold_freeze, wallet_grant

pytestmark = pytest.mark.django_db

BASE = "/api/wallet/v1/"


def post(client, route, body, **headers):
    return client.post(BASE + route, body, **headers)


def get(client, route, **params):
    return client.get(BASE + route, params)


@pytest.fixture
def writer(service_key, client_for):
    _, raw = service_key(scopes=["wallet:write"], name="billing")
    return client_for(raw)


@pytest.fixture
def reader(service_key, client_for):
    _, raw = service_key(scopes=["wallet:read"], name="reporting")
    return client_for(raw)


def test_the_whole_story_with_exact_numbers(staff_client, owner, owner_client):
    granted = post(staff_client, "grant", {"userId": owner.pk, "points": 500, "reason": "welcome"})
    assert granted.status_code == 200, granted.json()
    assert set(granted.json()) == {"entryId", "balance"}
    assert granted.json()["balance"] == 500
    assert granted.json()["entryId"].startswith("txn_")

    frozen = post(staff_client, "freeze", {"userId": owner.pk, "taskId": "tsk_1", "points": 120})
    assert frozen.status_code == 201, frozen.json()
    body = frozen.json()
    assert set(body) == {"holdId", "balance", "frozen", "expiresAt"}
    assert (body["balance"], body["frozen"]) == (380, 120)
    assert body["holdId"].startswith("hold_")
    assert body["expiresAt"].endswith("Z")
    expires_in = parse_datetime(body["expiresAt"]) - timezone.now()
    assert timedelta(seconds=3590) < expires_in <= timedelta(seconds=3600)

    confirmed = post(staff_client, "confirm", {"holdId": body["holdId"]})
    assert confirmed.status_code == 200, confirmed.json()
    assert confirmed.json() == {
        "holdId": body["holdId"],
        "status": "confirmed",
        "deducted": 120,
        "released": 0,
        "balance": 380,
        "frozen": 0,
    }
    assert get(owner_client, "balance").json() == {"userId": owner.pk, "balance": 380, "frozen": 0}

    listed = get(owner_client, "transactions").json()
    assert (listed["total"], listed["page"], listed["pageSize"], listed["totalPages"]) == (
        3,
        1,
        20,
        1,
    )
    assert [(e["type"], e["points"], e["balanceAfter"], e["frozenAfter"]) for e in listed["items"]] == [
        ("confirm", -120, 380, 0),
        ("freeze", 0, 380, 120),
        ("grant", 500, 500, 0),
    ]  # fmt: skip
    confirm = listed["items"][0]
    assert set(confirm) == {
        "id",
        "type",
        "points",
        "balanceAfter",
        "frozenAfter",
        "holdId",
        "taskId",
        "action",
        "channel",
        "reason",
        "createdAt",
    }
    assert (confirm["holdId"], confirm["taskId"]) == (body["holdId"], "tsk_1")
    assert listed["items"][2]["holdId"] is None
    assert listed["items"][2]["reason"] == "welcome"
    assert listed["items"][2]["id"] == granted.json()["entryId"]
    assert_wallet_invariants(owner)


def test_partial_confirm_over_http(writer, owner):
    wallet_grant(user=owner, points=500)
    hold_id = post(writer, "freeze", {"userId": owner.pk, "taskId": "t", "points": 120}).json()[
        "holdId"
    ]
    response = post(writer, "confirm", {"holdId": hold_id, "points": 100})
    assert response.status_code == 200
    assert response.json() == {
        "holdId": hold_id,
        "status": "confirmed",
        "deducted": 100,
        "released": 20,
        "balance": 400,
        "frozen": 0,
    }
    too_much = post(writer, "confirm", {"holdId": hold_id, "points": 121})
    assert too_much.status_code == 200  # already settled: a no-op returning the same result
    assert too_much.json() == response.json()
    assert_wallet_invariants(owner)


def test_freeze_idempotent_per_task_and_conflict(writer, owner):
    wallet_grant(user=owner, points=500)
    body = {"userId": owner.pk, "taskId": "tsk_x", "points": 120, "action": "a", "channel": "c"}
    first = post(writer, "freeze", body)
    again = post(writer, "freeze", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert LedgerEntry.objects.filter(type="freeze").count() == 1
    before = wallet_snapshot()
    conflict = post(writer, "freeze", {**body, "points": 121})
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "WALLET_HOLD_CONFLICT"
    assert conflict.json()["details"] == {"holdId": first.json()["holdId"], "points": 120}
    assert wallet_snapshot() == before


def test_confirm_release_repeats_and_conflicts(writer, owner):
    wallet_grant(user=owner, points=500)
    a = post(writer, "freeze", {"userId": owner.pk, "taskId": "a", "points": 120}).json()["holdId"]
    b = post(writer, "freeze", {"userId": owner.pk, "taskId": "b", "points": 30}).json()["holdId"]
    released = post(writer, "release", {"holdId": b})
    assert released.status_code == 200
    assert released.json() == {
        "holdId": b,
        "status": "released",
        "released": 30,
        "balance": 380,
        "frozen": 120,
    }
    confirmed = post(writer, "confirm", {"holdId": a})
    assert confirmed.json()["balance"] == 380 and confirmed.json()["frozen"] == 0
    before = wallet_snapshot()
    assert post(writer, "confirm", {"holdId": a}).json() == confirmed.json()
    assert post(writer, "release", {"holdId": b}).json() == {**released.json(), "frozen": 0}
    for route, hold_id in (("confirm", b), ("release", a)):
        response = post(writer, route, {"holdId": hold_id})
        assert response.status_code == 409
        assert response.json()["code"] == "WALLET_HOLD_SETTLED"
    unknown = post(writer, "confirm", {"holdId": "hold_doesnotexist"})
    assert (unknown.status_code, unknown.json()["code"]) == (404, "WALLET_HOLD_NOT_FOUND")
    unknown = post(writer, "release", {"holdId": "hold_doesnotexist"})
    assert (unknown.status_code, unknown.json()["code"]) == (404, "WALLET_HOLD_NOT_FOUND")
    assert wallet_snapshot() == before


def test_expired_hold_over_http(writer, owner):
    wallet_grant(user=owner, points=500)
    hold_id = post(writer, "freeze", {"userId": owner.pk, "taskId": "t", "points": 120}).json()[
        "holdId"
    ]
    Hold.objects.filter(public_id=hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    before = wallet_snapshot()
    response = post(writer, "confirm", {"holdId": hold_id})
    assert (response.status_code, response.json()["code"]) == (409, "WALLET_HOLD_EXPIRED")
    assert wallet_snapshot() == before
    # Release still works on an overdue hold (it is what expiry would do).
    assert post(writer, "release", {"holdId": hold_id}).json()["status"] == "released"


def test_freeze_ttl_and_validation(writer, owner):
    wallet_grant(user=owner, points=500)
    response = post(
        writer, "freeze", {"userId": owner.pk, "taskId": "t", "points": 1, "ttlSeconds": 60}
    )
    assert response.status_code == 201
    expires_in = parse_datetime(response.json()["expiresAt"]) - timezone.now()
    assert timedelta(seconds=50) < expires_in <= timedelta(seconds=60)


@pytest.mark.parametrize(
    "route, body, fields",
    [
        ("freeze", {"taskId": "t", "points": 0}, ["points"]),
        ("freeze", {"taskId": "t", "points": -1}, ["points"]),
        ("freeze", {"taskId": "t", "points": "many"}, ["points"]),
        ("freeze", {"taskId": "t", "points": 1.5}, ["points"]),
        ("freeze", {"points": 5}, ["taskId"]),
        ("freeze", {"taskId": "", "points": 5}, ["taskId"]),
        ("freeze", {"taskId": "t", "points": 5, "ttlSeconds": 0}, ["ttlSeconds"]),
        ("freeze", {"taskId": "t" * 65, "points": 5}, ["taskId"]),
        ("freeze", {"taskId": "t", "points": 5, "userId": "me"}, ["userId"]),
        ("confirm", {}, ["holdId"]),
        ("confirm", {"holdId": "x", "points": -1}, ["points"]),
        ("release", {"holdId": ""}, ["holdId"]),
        ("grant", {"points": 5}, ["userId"]),
        ("grant", {"userId": 1, "points": 0}, ["points"]),
        ("grant", {"userId": 1, "points": 5, "reference": "r" * 129}, ["reference"]),
    ],
)
def test_bad_input_is_400_and_changes_nothing(writer, owner, route, body, fields):
    wallet_grant(user=owner, points=500)
    hold_freeze(user=owner, task_id="existing", points=10)
    before = wallet_snapshot()
    response = post(writer, route, body)
    assert response.status_code == 400, response.json()
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert sorted(response.json()["details"]["fields"]) == fields
    assert wallet_snapshot() == before


def test_not_json_is_400(writer):
    response = writer.generic("POST", BASE + "freeze", "{not json", content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_JSON")


def test_insufficient_is_402_and_changes_nothing(owner, owner_client):
    wallet_grant(user=owner, points=100)
    before = wallet_snapshot()
    response = post(owner_client, "freeze", {"taskId": "t", "points": 101})
    assert response.status_code == 402
    assert response.json()["code"] == "WALLET_INSUFFICIENT"
    assert response.json()["details"] == {"balance": 100, "required": 101}
    assert wallet_snapshot() == before


def test_anonymous_and_bad_tokens_are_401(anon, client_for):
    for route in ("grant", "freeze", "confirm", "release"):
        response = post(anon, route, {})
        assert (response.status_code, response.json()["code"]) == (401, "AUTH_REQUIRED")
    for route in ("balance", "transactions", "statistics"):
        assert get(anon, route).status_code == 401
    response = get(client_for("psk_forged"), "balance")
    assert (response.status_code, response.json()["code"]) == (401, "AUTH_INVALID")


def test_grant_is_staff_or_wallet_write_only(owner, owner_client, reader, writer, staff_client):
    before = wallet_snapshot()
    for client in (owner_client, reader):
        response = post(client, "grant", {"userId": owner.pk, "points": 500})
        assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN")
    assert wallet_snapshot() == before
    assert post(writer, "grant", {"userId": owner.pk, "points": 5}).json()["balance"] == 5
    assert post(staff_client, "grant", {"userId": owner.pk, "points": 5}).json()["balance"] == 10
    entry = LedgerEntry.objects.filter(account__user=owner).order_by("id").last()
    assert entry.created_by is not None and entry.created_by.is_staff
    missing = post(staff_client, "grant", {"userId": 999999, "points": 5})
    assert (missing.status_code, missing.json()["code"]) == (404, "USER_NOT_FOUND")


def test_grant_by_reference_and_idempotency_key(staff_client, owner):
    body = {"userId": owner.pk, "points": 500, "reason": "promo", "reference": "promo-7"}
    first = post(staff_client, "grant", body)
    again = post(staff_client, "grant", body)
    assert again.json()["entryId"] == first.json()["entryId"]
    assert Account.objects.get(user=owner).balance == 500
    conflict = post(staff_client, "grant", {**body, "points": 400})
    assert (conflict.status_code, conflict.json()["code"]) == (409, "WALLET_GRANT_CONFLICT")

    key = {"HTTP_IDEMPOTENCY_KEY": "grant-abc"}
    one = post(staff_client, "grant", {"userId": owner.pk, "points": 7}, **key)
    two = post(staff_client, "grant", {"userId": owner.pk, "points": 7}, **key)
    assert two.json() == one.json() and two["Idempotent-Replayed"] == "true"
    assert Account.objects.get(user=owner).balance == 507
    reused = post(staff_client, "grant", {"userId": owner.pk, "points": 8}, **key)
    assert (reused.status_code, reused.json()["code"]) == (409, "IDEMPOTENCY_KEY_REUSED")
    assert Account.objects.get(user=owner).balance == 507


def test_freeze_with_idempotency_key_replays(writer, owner):
    wallet_grant(user=owner, points=500)
    key = {"HTTP_IDEMPOTENCY_KEY": "freeze-1"}
    body = {"userId": owner.pk, "taskId": "t", "points": 120}
    one = post(writer, "freeze", body, **key)
    two = post(writer, "freeze", body, **key)
    assert (one.status_code, two.status_code) == (201, 201)
    assert two.json() == one.json() and two["Idempotent-Replayed"] == "true"
    assert Hold.objects.count() == 1 and Account.objects.get(user=owner).frozen == 120


def test_a_user_acts_only_on_their_own_account(owner, outsider, owner_client, client_for):
    wallet_grant(user=owner, points=500)
    outsider_client = client_for(outsider)
    hold_id = post(owner_client, "freeze", {"taskId": "mine", "points": 120}).json()["holdId"]
    before = wallet_snapshot()
    # Reading or writing someone else's account by userId: 403.
    for route in ("balance", "transactions", "statistics"):
        response = get(outsider_client, route, userId=owner.pk)
        assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN")
    response = post(outsider_client, "freeze", {"userId": owner.pk, "taskId": "x", "points": 1})
    assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN")
    # Someone else's hold: 404, as if it did not exist.
    for route in ("confirm", "release"):
        response = post(outsider_client, route, {"holdId": hold_id})
        assert (response.status_code, response.json()["code"]) == (404, "WALLET_HOLD_NOT_FOUND")
    assert wallet_snapshot() == before
    # Their own, by omission or by their own id.
    assert get(outsider_client, "balance").json() == {
        "userId": outsider.pk,
        "balance": 0,
        "frozen": 0,
    }
    assert get(owner_client, "balance", userId=owner.pk).json()["frozen"] == 120
    assert post(owner_client, "release", {"holdId": hold_id}).json()["balance"] == 500


def test_a_user_cannot_settle_a_hold_a_service_froze(owner, owner_client, writer):
    wallet_grant(user=owner, points=500)
    task_hold, _ = hold_freeze(user=owner, task_id="tsk_1", points=120, channel="task")
    by_key = post(writer, "freeze", {"userId": owner.pk, "taskId": "k", "points": 5}).json()
    before = wallet_snapshot()
    for hold_id in (task_hold.public_id, by_key["holdId"]):
        for route in ("confirm", "release"):
            response = post(owner_client, route, {"holdId": hold_id})
            assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN")
    assert wallet_snapshot() == before
    assert post(writer, "release", {"holdId": task_hold.public_id}).status_code == 200


def test_service_keys_need_the_wallet_scope(service_key, client_for, owner):
    _, raw = service_key(scopes=["tasks:write"], name="other")
    client = client_for(raw)
    assert get(client, "balance", userId=owner.pk).status_code == 403
    assert (
        post(client, "freeze", {"userId": owner.pk, "taskId": "t", "points": 1}).status_code == 403
    )


def test_reader_key_reads_anyone_but_cannot_write(reader, owner):
    wallet_grant(user=owner, points=42)
    assert get(reader, "balance", userId=owner.pk).json() == {
        "userId": owner.pk,
        "balance": 42,
        "frozen": 0,
    }
    assert get(reader, "transactions", userId=owner.pk).json()["total"] == 1
    assert get(reader, "balance", userId=999999).json()["code"] == "USER_NOT_FOUND"
    response = post(reader, "freeze", {"userId": owner.pk, "taskId": "t", "points": 1})
    assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN")


def test_transactions_filters_and_pagination(owner, owner_client, django_assert_max_num_queries):
    wallet_grant(user=owner, points=500)
    for index in range(5):
        hold, _ = hold_freeze(user=owner, task_id=f"t{index}", points=10, action="a")
    response = get(owner_client, "transactions", type="freeze", pageSize=2, page=2)
    body = response.json()
    assert (body["total"], body["page"], body["pageSize"], body["totalPages"]) == (5, 2, 2, 3)
    assert [e["taskId"] for e in body["items"]] == ["t2", "t1"]
    assert get(owner_client, "transactions", type="grant").json()["total"] == 1
    today = timezone.now().date()
    assert get(owner_client, "transactions", **{"from": str(today)}).json()["total"] == 6
    assert get(owner_client, "transactions", to=str(today)).json()["total"] == 6
    yesterday = str(today - timedelta(days=1))
    assert get(owner_client, "transactions", to=yesterday).json()["total"] == 0
    tomorrow = (timezone.now() + timedelta(days=1)).isoformat()
    assert get(owner_client, "transactions", **{"from": tomorrow}).json()["total"] == 0
    with django_assert_max_num_queries(6):
        assert len(get(owner_client, "transactions", pageSize=100).json()["items"]) == 6


@pytest.mark.parametrize(
    "params, field",
    [
        ({"type": "bonus"}, "type"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2024-13-01"}, "to"),
        ({"from": "2024-02-01", "to": "2024-01-01"}, "to"),
        ({"pageSize": 101}, "pageSize"),
        ({"page": 0}, "page"),
        ({"userId": "abc"}, "userId"),
    ],
)
def test_transactions_bad_filters(owner_client, params, field):
    response = get(owner_client, "transactions", **params)
    assert response.status_code == 400, response.json()
    assert list(response.json()["details"]["fields"]) == [field]


def test_statistics_agree_with_transactions(owner, owner_client, writer):
    post(writer, "grant", {"userId": owner.pk, "points": 500})
    ids = []
    for task_id, points, action in [("a", 120, "txt2img"), ("b", 120, "txt2img"), ("c", 50, "up")]:
        body = {"userId": owner.pk, "taskId": task_id, "points": points, "action": action}
        ids.append(post(writer, "freeze", body).json()["holdId"])
    post(writer, "confirm", {"holdId": ids[0]})
    post(writer, "confirm", {"holdId": ids[1], "points": 100})
    post(writer, "release", {"holdId": ids[2]})
    stats = get(owner_client, "statistics").json()
    assert stats == {
        "balance": 280,
        "frozen": 0,
        "totalGranted": 500,
        "totalSpent": 220,
        "totalReleased": 70,
        "totalAdjusted": 0,
        "byAction": [{"action": "txt2img", "spent": 220, "count": 2}],
        "byDay": [{"date": str(timezone.now().date()), "spent": 220, "granted": 500}],
    }
    items = get(owner_client, "transactions", pageSize=100).json()["items"]
    assert stats["totalGranted"] == sum(e["points"] for e in items if e["type"] == "grant")
    assert stats["totalSpent"] == -sum(e["points"] for e in items if e["type"] == "confirm")
    assert stats["balance"] + stats["frozen"] == sum(e["points"] for e in items)
    assert (items[0]["balanceAfter"], items[0]["frozenAfter"]) == (
        stats["balance"],
        stats["frozen"],
    )
    future = get(owner_client, "statistics", **{"from": "2999-01-01"}).json()
    assert (future["totalGranted"], future["byDay"], future["balance"]) == (0, [], 280)
