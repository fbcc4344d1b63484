"""Operations reads: what the dashboard shows and what ``/metrics`` exports, from one place.

Every number comes from the database, so it is the same whichever process did the work.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from integrations.agents.models import Agent
from integrations.models import Executor, HealthStatus, WorkflowBinding
from integrations.selectors import bindings_not_runnable
from podi.realtime.selectors import failing_webhook_endpoints
from tasks.models import Task, TaskStatus
from wallet.models import EntryType, LedgerEntry

LIST_LIMIT = 10
RATE_WINDOW = timedelta(minutes=5)


def task_numbers(*, now=None) -> dict[str, Any]:
    """Queued, running, failed in the last hour, succeeded per minute (5-minute average) and the
    oldest queued task with its age."""
    now = now or timezone.now()
    counts = Task.objects.aggregate(
        queued=Count("pk", filter=Q(status=TaskStatus.QUEUED)),
        running=Count("pk", filter=Q(status=TaskStatus.RUNNING)),
        failed_last_hour=Count(
            "pk", filter=Q(status=TaskStatus.FAILED, finished_at__gte=now - timedelta(hours=1))
        ),
        succeeded_recent=Count(
            "pk", filter=Q(status=TaskStatus.SUCCEEDED, finished_at__gte=now - RATE_WINDOW)
        ),
    )
    oldest = (
        Task.objects.filter(status=TaskStatus.QUEUED)
        .order_by("created_at", "pk")
        .values("pk", "public_id", "action", "created_at")
        .first()
    )
    minutes = RATE_WINDOW.total_seconds() / 60
    return {
        "queued": counts["queued"],
        "running": counts["running"],
        "failedLastHour": counts["failed_last_hour"],
        "succeededPerMinute": round(counts["succeeded_recent"] / minutes, 2),
        "oldestQueued": (
            {
                "id": oldest["pk"],
                "taskId": oldest["public_id"],
                "action": oldest["action"],
                "ageSeconds": round((now - oldest["created_at"]).total_seconds(), 1),
            }
            if oldest
            else None
        ),
    }


def points_today(*, now=None) -> dict[str, int]:
    """Points charged (confirmed holds) and given back (released or expired) since 00:00 UTC."""
    now = now or timezone.now()
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    sums = LedgerEntry.objects.filter(created_at__gte=start).aggregate(
        charged=Sum("amount", filter=Q(type=EntryType.CONFIRM)),
        released=Sum("amount", filter=Q(type__in=[EntryType.RELEASE, EntryType.EXPIRE])),
    )
    return {"charged": sums["charged"] or 0, "released": sums["released"] or 0}


def executors_load() -> list[dict[str, Any]]:
    """Every executor with its health and in-flight (running) tasks against its capacity,
    unhealthy first."""
    running = dict(
        Task.objects.filter(status=TaskStatus.RUNNING, executor__isnull=False)
        .values_list("executor_id")
        .annotate(n=Count("pk"))
        .values_list("executor_id", "n")
    )
    order = {HealthStatus.UNHEALTHY: 0, HealthStatus.UNKNOWN: 1, HealthStatus.HEALTHY: 2}
    rows = [
        {
            "id": executor.pk,
            "name": executor.name,
            "kind": executor.kind,
            "enabled": executor.enabled,
            "health": executor.health_status,
            "error": executor.health_error[:300],
            "checkedAt": executor.health_checked_at,
            "running": running.get(executor.pk, 0),
            "maxConcurrency": executor.max_concurrency,
        }
        for executor in Executor.objects.only(
            "name",
            "kind",
            "enabled",
            "health_status",
            "health_error",
            "health_checked_at",
            "max_concurrency",
        )
    ]
    return sorted(rows, key=lambda r: (not r["enabled"], order.get(r["health"], 3), r["name"]))


def binding_problem(binding: WorkflowBinding) -> str:
    executor = binding.executor
    if not executor.enabled:
        return f"executor {executor.name} is disabled"
    if executor.health_status == HealthStatus.UNHEALTHY:
        return f"executor {executor.name} is unhealthy"
    return f"{executor.name} lacks {', '.join(binding.missing_node_classes)}"


def bindings_that_cannot_run(*, limit: int = LIST_LIMIT) -> dict[str, Any]:
    query = bindings_not_runnable()
    rows = query.select_related("ability", "workflow", "executor").order_by("ability__code", "pk")
    return {
        "count": query.count(),
        "items": [
            {
                "id": b.pk,
                "ability": b.ability.code,
                "workflow": b.workflow.name,
                "executor": b.executor.name,
                "problem": binding_problem(b),
            }
            for b in rows[:limit]
        ],
    }


def agents_offline(*, limit: int = LIST_LIMIT) -> dict[str, Any]:
    query = Agent.objects.filter(enabled=True, status=Agent.Status.OFFLINE).select_related(
        "executor"
    )
    return {
        "count": query.count(),
        "items": [
            {
                "id": a.pk,
                "name": a.name,
                "executor": a.executor.name,
                "lastHeartbeatAt": a.last_heartbeat_at,
            }
            for a in query.order_by("name")[:limit]
        ],
    }


def ops_overview(*, now=None) -> dict[str, Any]:
    """Everything the dashboard shows, as one JSON-able dict."""
    now = now or timezone.now()
    return {
        "at": now,
        "tasks": task_numbers(now=now),
        "points": points_today(now=now),
        "executors": executors_load(),
        "bindings": bindings_that_cannot_run(),
        "webhooks": failing_webhook_endpoints(now=now),
        "agents": agents_offline(),
    }


# ------------------------------------------------------------------------------ for /metrics


def task_counts() -> list[tuple[str, str, str, int]]:
    """(status, ability, executor, count) for every combination present."""
    rows = (
        Task.objects.values("status", "action", "executor__name").annotate(n=Count("pk")).order_by()
    )
    return [(r["status"], r["action"], r["executor__name"] or "", r["n"]) for r in rows]


def queue_oldest_age(*, now=None) -> float:
    now = now or timezone.now()
    oldest = Task.objects.filter(status=TaskStatus.QUEUED).aggregate(at=Min("created_at"))["at"]
    return (now - oldest).total_seconds() if oldest else 0.0


def points_totals() -> dict[str, int]:
    """All-time points charged and given back (released or expired)."""
    sums = LedgerEntry.objects.aggregate(
        charged=Sum("amount", filter=Q(type=EntryType.CONFIRM)),
        released=Sum("amount", filter=Q(type__in=[EntryType.RELEASE, EntryType.EXPIRE])),
    )
    return {"charged": sums["charged"] or 0, "released": sums["released"] or 0}
