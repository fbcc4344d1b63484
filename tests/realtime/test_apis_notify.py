"""``POST /api/notify/v1/event``: staff (or a notify:write key) pushes an event to a stream."""

from __future__ import annotations

import pytest

from podi.realtime.models import Event
from tests.realtime.conftest import make_task

pytestmark = pytest.mark.django_db

URL = "/api/notify/v1/event"


def test_staff_pushes_an_event_to_a_user(
    staff_client, owner, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            URL, {"userId": owner.pk, "type": "system.notice", "payload": {"text": "hello"}}
        )
    assert response.status_code == 201, response.json()
    body = response.json()
    event = Event.objects.get()
    assert body == {
        "id": event.public_id,
        "seq": 1,
        "type": "system.notice",
        "userId": owner.pk,
        "payload": {"text": "hello"},
        "timestamp": event.as_message()["timestamp"],
    }
    assert (event.user_id, event.seq, event.task_public_id) == (owner.pk, 1, "")
    assert [(e["id"], e["seq"], e["userId"]) for e in published] == [(event.public_id, 1, owner.pk)]

    second = staff_client.post(URL, {"userId": owner.pk, "type": "task.status"})
    assert second.status_code == 201
    assert (second.json()["seq"], second.json()["payload"]) == (2, {})


def test_without_user_id_the_event_is_the_callers_own(staff_client, staff):
    response = staff_client.post(URL, {"type": "system.notice", "payload": {}})
    assert response.status_code == 201
    assert response.json()["userId"] == staff.pk
    assert Event.objects.get().user_id == staff.pk


def test_a_task_id_in_the_payload_links_only_the_users_own_task(staff_client, owner, outsider):
    own = make_task(owner)
    foreign = make_task(outsider)
    for task_id in (own.public_id, foreign.public_id):
        response = staff_client.post(
            URL, {"userId": owner.pk, "type": "task.status", "payload": {"taskId": task_id}}
        )
        assert response.status_code == 201
    assert list(Event.objects.order_by("seq").values_list("task_public_id", flat=True)) == [
        own.public_id,
        "",
    ]


def test_a_plain_user_may_not_push_events(owner_client, outsider, owner):
    for body in ({"userId": outsider.pk, "type": "x.y"}, {"type": "x.y"}):
        response = owner_client.post(URL, body)
        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"
    assert not Event.objects.exists()


def test_anonymous_is_refused(anon):
    response = anon.post(URL, {"type": "x.y"})
    assert response.status_code == 401
    assert response.json()["code"] == "AUTH_REQUIRED"
    assert not Event.objects.exists()


def test_service_keys_need_notify_write(service_key, client_for, owner):
    _, writer = service_key(scopes=["notify:write"], name="pusher")
    _, reader = service_key(scopes=["tasks:write", "wallet:write"], name="other")
    refused = client_for(reader).post(URL, {"userId": owner.pk, "type": "x.y"})
    assert refused.status_code == 403
    assert not Event.objects.exists()
    allowed = client_for(writer).post(URL, {"userId": owner.pk, "type": "x.y"})
    assert allowed.status_code == 201
    assert Event.objects.get().user_id == owner.pk


def test_invalid_bodies_are_refused_with_field_errors(staff_client, owner):
    cases = [
        ({"userId": owner.pk, "type": "Nope"}, "type"),
        ({"userId": owner.pk}, "type"),
        ({"userId": owner.pk, "type": "a.b", "payload": [1]}, "payload"),
        ({"userId": owner.pk, "type": "a.b", "payload": {"x": "y" * 70_000}}, "payload"),
        ({"userId": "me", "type": "a.b"}, "userId"),
    ]
    for body, field in cases:
        response = staff_client.post(URL, body)
        assert response.status_code == 400, body
        assert response.json()["code"] == "VALIDATION_ERROR"
        assert list(response.json()["details"]["fields"]) == [field]
    missing = staff_client.post(URL, {"userId": 999_999, "type": "a.b"})
    assert missing.status_code == 404
    assert missing.json()["code"] == "USER_NOT_FOUND"
    assert not Event.objects.exists()


def test_an_idempotency_key_replay_returns_the_first_event(staff_client, owner):
    body = {"userId": owner.pk, "type": "a.b", "payload": {"n": 1}}
    first = staff_client.post(URL, body, HTTP_IDEMPOTENCY_KEY="k-1")
    again = staff_client.post(URL, body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert Event.objects.count() == 1
