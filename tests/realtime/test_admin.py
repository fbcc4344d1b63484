"""Admin pages of live events: webhook deliveries (redeliver), the event log, key secrets."""

from __future__ import annotations

import base64
import re
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import Client as DjangoClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks import Webhook

from podi.realtime.events import emit
from podi.realtime.models import Event, WebhookAttempt, WebhookDelivery
from podi.realtime.webhooks import webhook_attempt
from tasks.models import TaskStatus
from tests.realtime.conftest import make_task, record_callback

SECRET = "whsec_" + base64.b64encode(b"podi-admin-test-secret-0123456789").decode()
Status = WebhookDelivery.Status
DELIVERIES = "/admin/realtime/webhookdelivery/"
EVENTS = "/admin/realtime/event/"


@pytest.fixture
def console(staff):
    client = DjangoClient()
    client.force_login(staff)
    return client


@pytest.fixture(autouse=True)
def _webhook_settings(settings):
    settings.WEBHOOK_SECRET = SECRET
    settings.WEBHOOK_ALLOW_PRIVATE = True


def delivery_for(user, url: str, status=Status.PENDING, **fields) -> WebhookDelivery:
    task = make_task(user, status=TaskStatus.SUCCEEDED, progress=100, callback_url=url)
    with transaction.atomic():
        delivery = record_callback(task)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=status, **fields)
    delivery.refresh_from_db()
    return delivery


@pytest.mark.django_db
def test_delivery_changelist_filters_and_change_form(console, owner):
    now = timezone.now()
    rows = {
        status: delivery_for(owner, "https://example.com/hook", status=status) for status in Status
    }
    WebhookDelivery.objects.filter(pk=rows[Status.PENDING].pk).update(
        next_attempt_at=now - timedelta(minutes=5)
    )
    WebhookAttempt.objects.create(
        delivery=rows[Status.FAILED], number=1, status_code=500, latency_ms=12, error="HTTP 500"
    )
    response = console.get(DELIVERIES)
    assert response.status_code == 200
    for delivery in rows.values():
        assert delivery.public_id in response.text
    expected = {
        "failing": {rows[Status.FAILED].public_id},
        "exhausted": {rows[Status.EXHAUSTED].public_id},
        "stopped": {rows[Status.STOPPED].public_id},
        "overdue": {rows[Status.PENDING].public_id},
    }
    for value, shown in expected.items():
        page = console.get(DELIVERIES, {"attention": value})
        assert page.status_code == 200
        listed = set(re.findall(r"msg_[a-z0-9]+", page.text))
        assert listed == shown, value
    change = console.get(f"{DELIVERIES}{rows[Status.FAILED].pk}/change/")
    assert change.status_code == 200
    assert "HTTP 500" in change.text  # the attempts inline
    assert rows[Status.FAILED].public_id in change.text
    assert console.get(f"{DELIVERIES}add/").status_code == 403


@pytest.mark.django_db
def test_delivery_changelist_query_count_does_not_grow_with_rows(console, owner):
    delivery_for(owner, "https://example.com/a")
    with CaptureQueriesContext(connection) as one:
        assert console.get(DELIVERIES).status_code == 200
    for _ in range(5):
        delivery_for(owner, "https://example.com/b")
    with CaptureQueriesContext(connection) as six:
        assert console.get(DELIVERIES).status_code == 200
    assert len(six) == len(one)


def wait_for_status(delivery: WebhookDelivery, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivery.refresh_from_db()
        if delivery.status == status:
            return
        time.sleep(0.05)
    attempts = list(
        WebhookAttempt.objects.filter(delivery=delivery).values_list("number", "status_code")
    )
    raise AssertionError(f"{delivery.public_id} is {delivery.status}, attempts {attempts}")


@pytest.mark.django_db(transaction=True)
def test_redeliver_an_exhausted_delivery_from_admin(console, owner, receiver, worker, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [0]
    receiver.statuses = [500, 500, 200]
    delivery = delivery_for(owner, receiver.url)
    webhook_attempt(delivery_id=delivery.pk)
    wait_for_status(delivery, Status.EXHAUSTED)  # the scheduled retry, through the worker
    assert delivery.attempts == 2
    assert len(receiver.requests) == 2

    response = console.post(
        DELIVERIES,
        {"action": "redeliver", "_selected_action": [delivery.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Queued 1 delivery(ies) for another attempt." in response.text
    wait_for_status(delivery, Status.SUCCEEDED)
    assert (delivery.attempts, delivery.last_status_code) == (3, 200)
    requests = receiver.wait_for(3)
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {delivery.public_id}
    for request in requests:
        Webhook(SECRET).verify(request.body, request.headers)


@pytest.mark.django_db
def test_event_log_is_read_only(console, owner):
    with transaction.atomic():
        event = emit(user_id=owner.pk, type="system.notice", payload={"text": "hi"})
    response = console.get(EVENTS)
    assert response.status_code == 200
    assert event["id"] in response.text
    assert console.get(EVENTS, {"type": "system.notice"}).status_code == 200
    row = Event.objects.get()
    view = console.get(f"{EVENTS}{row.pk}/change/")
    assert view.status_code == 200
    assert "hi" in view.text
    assert console.post(f"{EVENTS}{row.pk}/change/", {"type": "x"}).status_code == 403
    assert console.get(f"{EVENTS}add/").status_code == 403
    assert Event.objects.get().type == "system.notice"
