"""Webhooks: one ``WebhookDelivery`` per event per URL, signed per Standard Webhooks, retried on
``WEBHOOK_RETRY_SCHEDULE``, never lost, never able to change what they report.

* ``webhook_delivery_create`` runs inside the caller's transaction (outbox: ``emit(…, webhook=…)``
  records it with the event), so the delivery row commits with the change it reports, and the
  actor that sends it is enqueued on commit.
* ``webhook_attempt`` claims the delivery with a guarded update (so a duplicate message, the
  reconciler and a redeliver never send one attempt twice), re-checks the SSRF guard, signs and
  posts with a timeout, records a ``WebhookAttempt`` and schedules the next one: the actor again
  with a Dramatiq ``delay``. The reconciler step re-sends deliveries that are due but were not
  attempted (the embedded broker's delayed messages die with the process).
* 2xx → ``succeeded``; 410 Gone → ``stopped`` (no more retries for that delivery); anything else
  (other status, timeout, refused address) → ``failed`` with the next attempt scheduled, or
  ``exhausted`` after the last entry of the schedule. ``webhook-id`` is the delivery's
  ``public_id``, the same on every attempt, so receivers can de-duplicate.
* The body is sent as recorded, after the registered body hooks (``tasks`` signs output URLs
  there, as they expire).
* The secret: the submitting service key's (rotated in admin, shown once), else
  ``WEBHOOK_SECRET``, else one generated once into ``PODI_DATA_DIR/webhook_secret``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from podi.crypto import decrypt_secret
from podi.events import enqueue_on_commit
from podi.ids import new_id
from podi.realtime.events import Webhook as WebhookRequest
from podi.realtime.events import webhook_body_for_sending
from podi.realtime.models import WebhookAttempt, WebhookDelivery
from podi.reconcile import reconcile_step
from podi.urlguard import UrlRefused, pinned_target

logger = logging.getLogger("podi.webhooks")

SECRET_FILE_NAME = "webhook_secret"  # noqa: S105 (a file name, not a secret)
USER_AGENT = "PODI-Webhooks/1"
# How long a claimed attempt may take before the delivery counts as due again (worker died).
CLAIM_MARGIN_SECONDS = 30
# A delayed message may fire a little before next_attempt_at (clock granularity).
EARLY_TOLERANCE = timedelta(milliseconds=500)
# The reconciler re-sends a due delivery only when its own message is this late.
RECONCILE_GRACE = timedelta(seconds=10)
RECONCILE_BATCH = 500
MAX_ERROR_CHARS = 1000
RETRYABLE = (WebhookDelivery.Status.PENDING, WebhookDelivery.Status.FAILED)
# Declared in ``podi.realtime.actors``, which imports this module: found by name, not imported.
DELIVERY_ACTOR = "deliver_webhook"


# --- Secrets ----------------------------------------------------------------------------------


def new_signing_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_signing_secret(secret: str, *, name: str = "WEBHOOK_SECRET") -> str:
    """``secret`` if it is a usable Standard Webhooks secret (base64 of ≥ 16 bytes)."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ImproperlyConfigured(
            f"{name} must be a Standard Webhooks secret: 'whsec_' followed by the base64 of "
            "at least 16 random bytes"
        )
    Webhook(secret)
    return secret


def default_signing_secret() -> str:
    """``WEBHOOK_SECRET``, or one generated once into ``PODI_DATA_DIR/webhook_secret``."""
    if settings.WEBHOOK_SECRET:
        return check_signing_secret(settings.WEBHOOK_SECRET)
    path = Path(settings.DATA_DIR) / SECRET_FILE_NAME
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process generated it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(new_signing_secret())
    for _ in range(50):  # the other process may still be writing it
        value = path.read_text().strip()
        if value:
            return check_signing_secret(value, name=str(path))
        time.sleep(0.01)
    raise ImproperlyConfigured(f"{path} is empty; delete it or set WEBHOOK_SECRET")


def signing_secret_for(delivery: WebhookDelivery) -> str:
    key = delivery.service_key
    if key is not None and key.webhook_secret_encrypted:
        return decrypt_secret(key.webhook_secret_encrypted)
    return default_signing_secret()


# --- Creating deliveries ----------------------------------------------------------------------


def webhook_send_on_commit(*, delivery_id: int, **options: Any) -> None:
    """Send the delivery actor for ``delivery_id`` after commit (``options``: e.g. ``delay``)."""
    enqueue_on_commit(dramatiq.get_broker().get_actor(DELIVERY_ACTOR), delivery_id, **options)


def webhook_delivery_create(
    *, webhook: WebhookRequest, user_id: int, task_id: str | None = None
) -> WebhookDelivery:
    """Record ``webhook``; call inside the transaction it reports on (outbox).

    The caller sends it with :func:`webhook_send_on_commit`; if that message is lost the
    reconciler sends it.
    """
    return WebhookDelivery.objects.create(
        public_id=new_id("msg"),
        user_id=user_id,
        task_public_id=task_id or "",
        service_key_id=webhook.service_key_id,
        event_type=webhook.event_type,
        url=webhook.url,
        payload=webhook.body,
        status=WebhookDelivery.Status.PENDING,
        next_attempt_at=timezone.now(),
    )


# --- Sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str
    latency_ms: int | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _pinned_target(url: str) -> tuple[str, dict[str, str], dict[str, Any]] | str:
    """The one SSRF guard's pinned target (``podi.urlguard.pinned_target``: resolve once, check
    every address, connect to the checked one), or the refusal reason."""
    try:
        return pinned_target(url)
    except UrlRefused as refused:
        return refused.reason


def _send(delivery: WebhookDelivery) -> Outcome:
    pinned = _pinned_target(delivery.url)
    if isinstance(pinned, str):
        return Outcome(None, f"Refused: {pinned}", None)
    target, extra_headers, extensions = pinned
    now = datetime.now(UTC)
    try:
        body = json.dumps(
            webhook_body_for_sending(delivery.payload), separators=(",", ":"), ensure_ascii=False
        )
        signature = Webhook(signing_secret_for(delivery)).sign(delivery.public_id, now, body)
    except Exception as exc:  # recorded as a failed attempt (a bad secret, storage down), not lost
        logger.exception("webhook %s could not be prepared", delivery.public_id)
        return Outcome(None, f"Not sent: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], None)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery.public_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        **extra_headers,
    }
    started = time.perf_counter()
    try:
        with httpx.Client(
            timeout=settings.WEBHOOK_TIMEOUT, follow_redirects=False, trust_env=False
        ) as client:
            response = client.post(
                target, content=body.encode(), headers=headers, extensions=extensions
            )
    except httpx.HTTPError as exc:
        latency = round((time.perf_counter() - started) * 1000)
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], latency)
    latency = round((time.perf_counter() - started) * 1000)
    if 200 <= response.status_code < 300:
        return Outcome(response.status_code, "", latency)
    text = (
        response.text[:300]
        if response.headers.get("content-type", "").startswith(("text/", "application/json"))
        else ""
    )
    return Outcome(response.status_code, f"HTTP {response.status_code} {text}".strip(), latency)


def _claim(delivery_id: int) -> bool:
    now = timezone.now()
    lease = timedelta(seconds=settings.WEBHOOK_TIMEOUT + CLAIM_MARGIN_SECONDS)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status__in=RETRYABLE, next_attempt_at__lte=now + EARLY_TOLERANCE
    ).update(next_attempt_at=now + lease)
    return claimed == 1


def webhook_attempt(*, delivery_id: int) -> WebhookDelivery | None:
    """Make the delivery's next attempt if it is due; None when it was not (already done,
    not yet due, or claimed by another worker)."""
    if not _claim(delivery_id):
        return None
    delivery = WebhookDelivery.objects.select_related("service_key").get(pk=delivery_id)
    started_at = timezone.now()
    outcome = _send(delivery)
    return _record(delivery_id=delivery_id, started_at=started_at, outcome=outcome)


def _record(*, delivery_id: int, started_at: datetime, outcome: Outcome) -> WebhookDelivery:
    Status = WebhookDelivery.Status
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        number = delivery.attempts + 1
        now = timezone.now()
        next_at = None
        if outcome.succeeded:
            delivery.status = Status.SUCCEEDED
            delivery.delivered_at = now
        elif outcome.status_code == 410:
            delivery.status = Status.STOPPED
        else:
            schedule = settings.WEBHOOK_RETRY_SCHEDULE
            if number - 1 < len(schedule):
                delivery.status = Status.FAILED
                next_at = now + timedelta(seconds=schedule[number - 1])
            else:
                delivery.status = Status.EXHAUSTED
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=started_at,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            error=outcome.error,
            next_attempt_at=next_at,
        )
        delivery.attempts = number
        delivery.next_attempt_at = next_at
        delivery.last_status_code = outcome.status_code
        delivery.last_error = outcome.error
        delivery.save(
            update_fields=[
                "status",
                "attempts",
                "next_attempt_at",
                "last_status_code",
                "last_error",
                "delivered_at",
            ]
        )
        if next_at is not None:
            delay_ms = max(0, round((next_at - timezone.now()).total_seconds() * 1000))
            webhook_send_on_commit(delivery_id=delivery.pk, delay=delay_ms)
    log = logger.info if outcome.succeeded else logger.warning
    log(
        "webhook %s attempt %s → %s",
        delivery.public_id,
        number,
        outcome.status_code or outcome.error,
        extra={"delivery": delivery.public_id, "status": delivery.status},
    )
    return delivery


def webhook_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send ``delivery`` again now, same ``webhook-id`` and body (admin's redeliver action).

    If that attempt fails, retries go on along the schedule from where the delivery was (an
    exhausted delivery gets exactly one more attempt).
    """
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        locked.status = WebhookDelivery.Status.PENDING
        locked.next_attempt_at = timezone.now()
        locked.save(update_fields=["status", "next_attempt_at"])
        webhook_send_on_commit(delivery_id=locked.pk)
    return locked


# --- Reconciler -------------------------------------------------------------------------------


@reconcile_step
def reconcile_webhook_deliveries() -> int:
    """Re-send due deliveries whose message did not come (embedded broker restart, lost message).

    Safe to over-send: ``webhook_attempt`` claims each attempt once.
    """
    due = list(
        WebhookDelivery.objects.filter(
            status__in=RETRYABLE, next_attempt_at__lte=timezone.now() - RECONCILE_GRACE
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:RECONCILE_BATCH]
    )
    actor = dramatiq.get_broker().get_actor(DELIVERY_ACTOR)
    for pk in due:
        actor.send(pk)
    return len(due)
