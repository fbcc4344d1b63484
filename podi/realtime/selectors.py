"""Reads of live events: newest seqs, a user's events after a seq, a task's events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, Q
from django.utils import timezone

from podi.models import ServiceKey
from podi.realtime.models import Event, EventCursor, WebhookAttempt, WebhookDelivery


def latest_seq(*, user_id: int) -> int:
    latest = EventCursor.objects.filter(user_id=user_id).values_list("last_seq", flat=True)
    return latest.first() or 0


def latest_seqs(*, user_ids: set[int]) -> dict[int, int]:
    return dict(EventCursor.objects.filter(user_id__in=user_ids).values_list("user_id", "last_seq"))


def usable_principals(*, user_ids: set[int], key_ids: set[int]) -> tuple[set[int], set[int]]:
    """(active user ids, usable service key ids) among those given."""
    active = set(
        get_user_model()
        .objects.filter(pk__in=user_ids, is_active=True)
        .values_list("pk", flat=True)
    )
    keys = set(
        ServiceKey.objects.filter(pk__in=key_ids, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .values_list("pk", flat=True)
    )
    return active, keys


def events_after(*, user_id: int, after: int, until: int | None, limit: int) -> list[dict]:
    """The user's events with ``after < seq <= until``, oldest first, as stream messages."""
    queryset = Event.objects.filter(user_id=user_id, seq__gt=after)
    if until is not None:
        queryset = queryset.filter(seq__lte=until)
    return [{**event.as_message(), "userId": user_id} for event in queryset.order_by("seq")[:limit]]


def task_events(
    *, user_id: int, task_id: str, after: int | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """The events about task ``task_id`` in its owner's (``user_id``) stream, oldest first.

    The caller has checked that the task is visible (``GET /api/tasks/v1/{taskId}/events``).
    """
    queryset = Event.objects.filter(user_id=user_id, task_public_id=task_id)
    if after is not None:
        queryset = queryset.filter(seq__gt=after)
    return [event.as_message() for event in queryset.order_by("seq")[:limit]]


def failing_webhook_endpoints(*, now=None, limit: int = 10) -> dict[str, Any]:
    """Callback URLs with deliveries failing (retries scheduled) or given up in the last 24 h."""
    now = now or timezone.now()
    Status = WebhookDelivery.Status
    query = (
        WebhookDelivery.objects.filter(
            status__in=[Status.FAILED, Status.EXHAUSTED], created_at__gte=now - timedelta(days=1)
        )
        .values("url")
        .annotate(
            failing=Count("pk", filter=Q(status=Status.FAILED)),
            exhausted=Count("pk", filter=Q(status=Status.EXHAUSTED)),
        )
        .order_by("-failing", "-exhausted", "url")
    )
    rows = list(query[: limit + 1])
    return {
        "count": query.count(),
        "items": [
            {"url": r["url"], "failing": r["failing"], "exhausted": r["exhausted"]}
            for r in rows[:limit]
        ],
    }


def webhook_attempt_outcomes() -> dict[str, int]:
    """Attempts by outcome: ``success`` (2xx), ``http_error`` (other status), ``network_error``
    (no answer: timeout, refused, TLS)."""
    counts = WebhookAttempt.objects.aggregate(
        success=Count("pk", filter=Q(status_code__gte=200, status_code__lt=300)),
        http_error=Count(
            "pk",
            filter=Q(status_code__isnull=False) & ~Q(status_code__gte=200, status_code__lt=300),
        ),
        network_error=Count("pk", filter=Q(status_code__isnull=True)),
    )
    return counts
