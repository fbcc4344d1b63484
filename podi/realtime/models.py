"""The persisted side of live events: each user's event log and cursor, and webhook deliveries.

The tables were created by ``tasks`` (``tasks/migrations/0001_initial.py``) and moved here in
place (``tasks/migrations/0002_live_events_to_realtime.py`` and ``0001_initial.py`` here); see
docs/adr/0006-live-events.md. Nothing here points at another app's rows: a task is named by its
public id (``task_public_id``), as on the wire.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class EventCursor(models.Model):
    """The last event ``seq`` given to a user; locked to hand out the next one in commit order."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    last_seq = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.last_seq}"


class Event(models.Model):
    """A persisted event of a user's stream (task, wallet, agent events), replayable by ``seq``."""

    public_id = models.CharField(max_length=32, unique=True)
    # No index of its own: ``event_user_seq`` (user, seq) leads with it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    seq = models.BigIntegerField()
    task_public_id = models.CharField(
        max_length=64, blank=True, default="", help_text="The task the event is about, if any."
    )
    type = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["user", "seq"]
        constraints = [models.UniqueConstraint(fields=["user", "seq"], name="event_user_seq")]
        indexes = [models.Index(fields=["task_public_id", "seq"], name="event_task_idx")]

    def __str__(self) -> str:
        return f"{self.public_id} #{self.seq} {self.type}"

    def as_message(self) -> dict:
        return {
            "id": self.public_id,
            "seq": self.seq,
            "type": self.type,
            "payload": self.payload,
            "timestamp": self.created_at.isoformat().replace("+00:00", "Z"),
        }


class WebhookDelivery(models.Model):
    """One event for one callback URL; ``public_id`` is the stable ``webhook-id`` of every attempt."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"  # last attempt failed, another is scheduled
        EXHAUSTED = "exhausted"  # the retry schedule ran out
        STOPPED = "stopped"  # the receiver answered 410 Gone

    public_id = models.CharField(max_length=32, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    task_public_id = models.CharField(
        max_length=64, blank=True, default="", help_text="The task the callback is about, if any."
    )
    service_key = models.ForeignKey(
        "podi.ServiceKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    event_type = models.CharField(max_length=64)
    url = models.URLField(max_length=2000)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_due_idx")]

    def __str__(self) -> str:
        return f"{self.public_id} {self.event_type} → {self.url}"


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number}: {self.status_code or self.error[:40]}"
