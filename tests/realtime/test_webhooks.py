"""Task callbacks: a real receiver on loopback verifies every signature with standardwebhooks."""

from __future__ import annotations

import base64
import os
import stat
import threading
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError

from podi.errors import AppError
from podi.models import ServiceKey
from podi.realtime.models import WebhookAttempt, WebhookDelivery
from podi.realtime.webhooks import (
    check_signing_secret,
    default_signing_secret,
    reconcile_webhook_deliveries,
    webhook_attempt,
    webhook_send_on_commit,
)
from podi.services import service_key_rotate_webhook_secret
from podi.urlguard import validate_callback_url
from tasks.models import Task, TaskAsset, TaskStatus
from tests.realtime.conftest import make_task, record_callback

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

SECRET = "whsec_" + base64.b64encode(b"podi-test-secret-0123456789abcdef").decode()
Status = WebhookDelivery.Status


@pytest.fixture(autouse=True)
def _webhook_settings(settings):
    settings.WEBHOOK_SECRET = SECRET
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    settings.WEBHOOK_TIMEOUT = 5


def finished_task(user, url: str, **fields) -> Task:
    values = {
        "status": TaskStatus.SUCCEEDED,
        "progress": 100,
        "result": {"seed": 7},
        "callback_url": url,
        **fields,
    }
    return make_task(user, **values)


def create_delivery(task: Task, event_name: str = "task.succeeded") -> WebhookDelivery:
    with transaction.atomic():
        return record_callback(task, event_name)


def verified(request, secret: str = SECRET) -> dict:
    return Webhook(secret).verify(request.body, request.headers)


def task_state(task: Task) -> tuple:
    return Task.objects.filter(pk=task.pk).values_list("status", "progress", "updated_at").get()


# --- The body -----------------------------------------------------------------------------------


def test_the_delivery_records_the_design_callback_body(owner, receiver, service_key):
    key, _ = service_key(scopes=["tasks:write"])
    task = finished_task(owner, receiver.url, service_key=key)
    TaskAsset.objects.create(
        task=task,
        kind=TaskAsset.Kind.OUTPUT,
        object_key=f"results/{owner.pk}/{task.public_id}/a.png",
        mime_type="image/png",
        size=1234,
        width=64,
        height=32,
    )
    TaskAsset.objects.create(
        task=task, kind=TaskAsset.Kind.INPUT, object_key="uploads/in.png", mime_type="image/png"
    )
    before = timezone.now()
    delivery = create_delivery(task)
    assert delivery.public_id.startswith("msg_")
    assert (delivery.user_id, delivery.task_public_id, delivery.service_key_id) == (
        owner.pk,
        task.public_id,
        key.pk,
    )
    assert (delivery.event_type, delivery.url, delivery.status) == (
        "task.succeeded",
        receiver.url,
        Status.PENDING,
    )
    assert delivery.attempts == 0 and before <= delivery.next_attempt_at <= timezone.now()
    timestamp = delivery.payload.pop("timestamp")
    assert timestamp.endswith("Z")
    assert delivery.payload == {
        "type": "task.succeeded",
        "taskId": task.public_id,
        "status": "succeeded",
        "progress": 100,
        "outputs": [
            {
                "objectKey": f"results/{owner.pk}/{task.public_id}/a.png",
                "mimeType": "image/png",
                "size": 1234,
                "width": 64,
                "height": 32,
            }
        ],
        "result": {"seed": 7},
        "error": None,
    }

    failed = make_task(
        owner,
        status=TaskStatus.FAILED,
        error_code="EXECUTOR_ERROR",
        error_message="boom",
        callback_url=receiver.url,
    )
    body = create_delivery(failed, "task.failed").payload
    assert body["error"] == {"code": "EXECUTOR_ERROR", "message": "boom"}
    assert (body["type"], body["status"], body["outputs"], body["result"]) == (
        "task.failed",
        "failed",
        [],
        None,
    )


# --- One attempt (the actor's body) -------------------------------------------------------------


def test_an_attempt_is_signed_per_standard_webhooks_and_recorded(owner, receiver):
    task = finished_task(owner, receiver.url)
    TaskAsset.objects.create(
        task=task, kind=TaskAsset.Kind.OUTPUT, object_key="results/1/x/a.png", mime_type="image/png"
    )
    delivery = create_delivery(task)
    state = task_state(task)

    done = webhook_attempt(delivery_id=delivery.pk)

    assert done.status == Status.SUCCEEDED and done.attempts == 1
    assert (done.last_status_code, done.last_error, done.next_attempt_at) == (200, "", None)
    assert done.delivered_at is not None
    [request] = receiver.requests
    body = verified(request)
    assert request.headers["webhook-id"] == delivery.public_id
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "PODI-Webhooks/1"
    assert request.headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert abs(int(request.headers["webhook-timestamp"]) - timezone.now().timestamp()) < 10
    assert request.headers["webhook-signature"].startswith("v1,")
    url = body["outputs"][0].pop("url")
    assert url.startswith(f"{django_settings.PUBLIC_BASE_URL}/")
    assert body == delivery.payload
    with pytest.raises(WebhookVerificationError):
        Webhook(base64.b64encode(b"another secret entirely").decode()).verify(
            request.body, request.headers
        )
    [attempt] = WebhookAttempt.objects.filter(delivery=delivery)
    assert (attempt.number, attempt.status_code, attempt.error, attempt.next_attempt_at) == (
        1,
        200,
        "",
        None,
    )
    assert attempt.latency_ms is not None and 0 <= attempt.latency_ms < 5000
    # Done is done: another message for it sends nothing.
    assert webhook_attempt(delivery_id=delivery.pk) is None
    assert len(receiver.requests) == 1
    assert task_state(task) == state


def test_a_failure_schedules_the_next_attempt_and_the_schedule_ends_exhausted(
    owner, receiver, settings, broker_messages
):
    settings.WEBHOOK_RETRY_SCHEDULE = [0, 0]
    receiver.statuses = [500, 502, 503]
    task = finished_task(owner, receiver.url)
    delivery = create_delivery(task)
    state = task_state(task)

    first = webhook_attempt(delivery_id=delivery.pk)
    assert (first.status, first.attempts, first.last_status_code) == (Status.FAILED, 1, 500)
    assert first.last_error == "HTTP 500 nope"
    assert first.next_attempt_at is not None
    assert broker_messages() == [("deliver_webhook", (delivery.pk,))]
    second = webhook_attempt(delivery_id=delivery.pk)
    assert (second.status, second.attempts, second.last_status_code) == (Status.FAILED, 2, 502)
    third = webhook_attempt(delivery_id=delivery.pk)
    assert (third.status, third.attempts, third.last_status_code) == (Status.EXHAUSTED, 3, 503)
    assert third.next_attempt_at is None
    assert webhook_attempt(delivery_id=delivery.pk) is None
    assert len(broker_messages()) == 2  # one per scheduled retry, none after the last
    assert len(receiver.requests) == 3
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery.public_id}
    for request in receiver.requests:
        assert verified(request)["taskId"] == task.public_id
    attempts = list(WebhookAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 502), (3, 503)]
    assert [a.next_attempt_at is not None for a in attempts] == [True, True, False]
    # A failing callback never changes the task.
    assert task_state(task) == state


def test_410_gone_stops_retries(owner, receiver, broker_messages):
    receiver.statuses = [410]
    delivery = create_delivery(finished_task(owner, receiver.url))
    done = webhook_attempt(delivery_id=delivery.pk)
    assert (done.status, done.attempts, done.last_status_code, done.next_attempt_at) == (
        Status.STOPPED,
        1,
        410,
        None,
    )
    assert broker_messages() == []
    assert webhook_attempt(delivery_id=delivery.pk) is None
    assert len(receiver.requests) == 1


def test_a_timeout_is_a_failed_attempt(owner, receiver, settings):
    settings.WEBHOOK_TIMEOUT = 1
    receiver.delay = 2.5
    delivery = create_delivery(finished_task(owner, receiver.url))
    done = webhook_attempt(delivery_id=delivery.pk)
    assert (done.status, done.attempts, done.last_status_code) == (Status.FAILED, 1, None)
    assert done.last_error.startswith("ReadTimeout")
    attempt = WebhookAttempt.objects.get(delivery=delivery)
    assert attempt.status_code is None and 900 <= attempt.latency_ms < 2500


def test_a_private_address_is_refused_when_not_allowed(owner, receiver, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    # At submit time: the guard the tasks API applies to callbackUrl.
    with pytest.raises(AppError) as refused:
        validate_callback_url(receiver.url)
    assert refused.value.code == "VALIDATION_ERROR"
    assert refused.value.details["fields"]["callbackUrl"] == [
        "The host resolves to a private, loopback or link-local address."
    ]
    # At send time (DNS can change after submit): no request is made.
    for url in (receiver.url, f"http://localhost:{receiver.port}/x", "http://[::1]:9/x"):
        delivery = create_delivery(finished_task(owner, url))
        done = webhook_attempt(delivery_id=delivery.pk)
        assert (done.status, done.attempts, done.last_status_code) == (Status.FAILED, 1, None)
        assert done.last_error == (
            "Refused: The host resolves to a private, loopback or link-local address."
        )
    assert receiver.requests == []


def test_two_workers_racing_on_one_delivery_send_it_once(owner, receiver):
    receiver.delay = 0.5
    delivery = create_delivery(finished_task(owner, receiver.url))
    results = []

    def attempt():
        try:
            results.append(webhook_attempt(delivery_id=delivery.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r is None for r in results) == [False, True, True, True]
    assert len(receiver.requests) == 1
    assert WebhookAttempt.objects.filter(delivery=delivery).count() == 1


# --- Through a real broker and worker --------------------------------------------------------


def test_failure_then_success_on_the_retry_schedule_through_the_worker(
    owner, receiver, settings, worker
):
    settings.WEBHOOK_RETRY_SCHEDULE = [1, 2, 30]
    receiver.statuses = [500, 503, 204]
    task = finished_task(owner, receiver.url)
    state = task_state(task)
    with transaction.atomic():  # as emit(…, webhook=…) does when a task finishes
        delivery = record_callback(task)
        webhook_send_on_commit(delivery_id=delivery.pk)

    requests = receiver.wait_for(3, timeout=30)
    assert len(requests) == 3
    first_gap = requests[1].at - requests[0].at
    second_gap = requests[2].at - requests[1].at
    assert 0.9 <= first_gap <= 3.5, first_gap
    assert 1.9 <= second_gap <= 4.5, second_gap
    for request in requests:
        assert verified(request)["taskId"] == task.public_id
        assert request.headers["webhook-id"] == delivery.public_id
    deadline = timezone.now() + timedelta(seconds=10)
    while timezone.now() < deadline:
        delivery.refresh_from_db()
        if delivery.status == Status.SUCCEEDED:
            break
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
        Status.SUCCEEDED,
        3,
        204,
    )
    attempts = list(WebhookAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [(a.number, a.status_code) for a in attempts] == [(1, 500), (2, 503), (3, 204)]
    scheduled = [(a.next_attempt_at - a.started_at).total_seconds() for a in attempts[:2]]
    assert 1 <= scheduled[0] < 2 and 2 <= scheduled[1] < 3
    assert attempts[2].next_attempt_at is None
    assert len(receiver.wait_for(4, timeout=1.5)) == 3  # nothing after the success
    assert task_state(task) == state


def test_the_reconciler_sends_deliveries_whose_message_was_lost(owner, receiver, worker):
    task = finished_task(owner, receiver.url)
    overdue = create_delivery(task)
    in_grace = create_delivery(task, "task.progress")
    later = create_delivery(task, "task.running")
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=overdue.pk).update(next_attempt_at=now - timedelta(minutes=5))
    WebhookDelivery.objects.filter(pk=in_grace.pk).update(
        next_attempt_at=now - timedelta(seconds=2)
    )
    WebhookDelivery.objects.filter(pk=later.pk).update(next_attempt_at=now + timedelta(minutes=5))

    assert reconcile_webhook_deliveries() == 1
    [request] = receiver.wait_for(1)
    assert request.headers["webhook-id"] == overdue.public_id
    assert len(receiver.wait_for(2, timeout=1.5)) == 1
    statuses = dict(WebhookDelivery.objects.values_list("public_id", "status"))
    assert statuses == {
        overdue.public_id: Status.SUCCEEDED,
        in_grace.public_id: Status.PENDING,
        later.public_id: Status.PENDING,
    }


# --- Secrets ----------------------------------------------------------------------------------


def test_a_service_key_with_its_own_secret_signs_its_tasks_callbacks(owner, receiver, service_key):
    key, _ = service_key(scopes=["tasks:write"])
    own_secret = service_key_rotate_webhook_secret(key=key)
    assert own_secret.startswith("whsec_") and own_secret != SECRET
    key.refresh_from_db()
    assert own_secret not in key.webhook_secret_encrypted  # encrypted at rest

    delivery = create_delivery(finished_task(owner, receiver.url, service_key=key))
    webhook_attempt(delivery_id=delivery.pk)
    [request] = receiver.requests
    assert verified(request, own_secret)["taskId"] == delivery.payload["taskId"]
    with pytest.raises(WebhookVerificationError):
        verified(request, SECRET)

    rotated = service_key_rotate_webhook_secret(key=key)
    assert rotated != own_secret
    second = create_delivery(finished_task(owner, receiver.url, service_key=key))
    webhook_attempt(delivery_id=second.pk)
    assert verified(receiver.requests[1], rotated)["taskId"] == second.payload["taskId"]


def test_without_a_configured_secret_one_is_generated_once_into_the_data_dir(
    owner, receiver, settings, tmp_path
):
    settings.WEBHOOK_SECRET = None
    settings.DATA_DIR = tmp_path
    generated = default_signing_secret()
    path = tmp_path / "webhook_secret"
    assert path.read_text() == generated and generated.startswith("whsec_")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert default_signing_secret() == generated
    delivery = create_delivery(finished_task(owner, receiver.url))
    webhook_attempt(delivery_id=delivery.pk)
    assert verified(receiver.requests[0], generated)["taskId"] == delivery.payload["taskId"]


def test_a_malformed_secret_fails_with_a_clear_message():
    with pytest.raises(ImproperlyConfigured, match="WEBHOOK_SECRET must be a Standard Webhooks"):
        check_signing_secret("not base64 at all!")
    with pytest.raises(ImproperlyConfigured):
        check_signing_secret("whsec_" + base64.b64encode(b"short").decode())
    assert check_signing_secret(SECRET) == SECRET


def test_an_undecryptable_key_secret_is_a_recorded_failure_not_a_crash(
    owner, receiver, service_key
):
    key, _ = service_key(scopes=["tasks:write"])
    ServiceKey.objects.filter(pk=key.pk).update(webhook_secret_encrypted="not-a-fernet-token")
    delivery = create_delivery(finished_task(owner, receiver.url, service_key=key))
    done = webhook_attempt(delivery_id=delivery.pk)
    assert (done.status, done.attempts, done.last_status_code) == (Status.FAILED, 1, None)
    assert done.last_error.startswith("Not sent: ImproperlyConfigured: A stored secret cannot")
    assert done.next_attempt_at is not None
    assert receiver.requests == []
