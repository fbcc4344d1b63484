"""Reads of the tasks app, with the access rule built in: a user sees only their own tasks."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from podi.auth import is_staff_principal, service_key_of
from podi.errors import AppError
from podi.realtime.events import Principal
from tasks import error_codes as codes
from tasks.models import TERMINAL_STATUSES, Task, TaskBatch, TaskStatus, TaskTemplate


def _sees_everyone(request) -> bool:
    return is_staff_principal(request) or service_key_of(request) is not None


def task_get_for_request(request, task_id: str) -> Task:
    """The task, if the caller may see it; 404 ``TASK_NOT_FOUND`` otherwise."""
    queryset = Task.objects.select_related("executor", "batch", "ability")
    if not _sees_everyone(request):
        queryset = queryset.filter(user=request.user)
    task = queryset.filter(public_id=task_id).first()
    if task is None:
        raise AppError(codes.TASK_NOT_FOUND)
    return task


def tasks_for_user(
    *,
    user,
    status: str | None = None,
    action: str | None = None,
    batch_id: str | None = None,
    created_from=None,
    created_to=None,
) -> QuerySet[Task]:
    queryset = Task.objects.filter(user=user).select_related("executor", "batch")
    if status:
        queryset = queryset.filter(status=status)
    if action:
        queryset = queryset.filter(action=action)
    if batch_id:
        queryset = queryset.filter(batch__public_id=batch_id)
    if created_from:
        queryset = queryset.filter(created_at__gte=created_from)
    if created_to:
        queryset = queryset.filter(created_at__lt=created_to)
    return queryset.prefetch_related("assets").order_by("-created_at", "-pk")


def tasks_followable(principal: Principal, task_ids: list[str]) -> tuple[set[str], set[str]]:
    """The ``"task"`` access check of the live stream (registered in ``TasksConfig.ready``):
    (ids of the principal's own tasks, ids of others' tasks it may follow: staff any, a service
    key those it submitted)."""
    queryset = Task.objects.filter(public_id__in=task_ids)
    if not principal.is_staff:
        allowed = Q(user_id=principal.user_id)
        if principal.key_id is not None:
            allowed |= Q(service_key_id=principal.key_id)
        queryset = queryset.filter(allowed)
    own, foreign = set(), set()
    for public_id, user_id in queryset.values_list("public_id", "user_id"):
        (own if user_id == principal.user_id else foreign).add(public_id)
    return own, foreign


def tasks_live_holds(hold_ids: list[str]) -> set[str]:
    """The wallet's live-hold check (registered in ``TasksConfig.ready``): the ids among
    ``hold_ids`` that belong to a queued or running task, which will settle them itself."""
    return set(
        Task.objects.filter(
            status__in=[TaskStatus.QUEUED, TaskStatus.RUNNING], hold_id__in=hold_ids
        ).values_list("hold_id", flat=True)
    )


def batch_get_for_request(request, batch_id: str) -> TaskBatch:
    queryset = TaskBatch.objects.all()
    if not _sees_everyone(request):
        queryset = queryset.filter(user=request.user)
    batch = queryset.filter(public_id=batch_id).first()
    if batch is None:
        raise AppError(codes.BATCH_NOT_FOUND)
    return batch


def batch_summary(batch: TaskBatch) -> dict:
    rows = batch.tasks.values("status").annotate(n=Count("id"))
    counts = {status.value: 0 for status in TaskStatus}
    for row in rows:
        counts[row["status"]] = row["n"]
    total = sum(counts.values())
    progress_values = list(batch.tasks.values_list("progress", "status"))
    progress = (
        round(
            sum(100 if s in TERMINAL_STATUSES else p for p, s in progress_values)
            / len(progress_values)
        )
        if progress_values
        else 0
    )
    if counts["queued"] or counts["running"]:
        overall = "running" if counts["running"] or total != counts["queued"] else "queued"
    elif counts["succeeded"] == total:
        overall = "succeeded"
    elif counts["succeeded"]:
        overall = "partial"
    elif counts["canceled"] == total:
        overall = "canceled"
    else:
        overall = "failed"
    return {
        "batchId": batch.public_id,
        "action": batch.action,
        "status": overall,
        "progress": progress,
        "total": total,
        "counts": counts,
        "points": batch.points,
        "taskIds": list(batch.tasks.order_by("pk").values_list("public_id", flat=True)),
        "createdAt": batch.created_at,
    }


def template_get(template_id: str) -> TaskTemplate:
    template = (
        TaskTemplate.objects.select_related("ability")
        .filter(public_id=template_id, enabled=True)
        .first()
    )
    if template is None:
        raise AppError(codes.TEMPLATE_NOT_FOUND)
    return template


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def ability_invocation_stats(*, since) -> list[dict]:
    """Per action: count, success rate, p50/p95 run duration and points charged since ``since``."""
    rows: dict[str, dict] = {}
    queryset = Task.objects.filter(created_at__gte=since).values_list(
        "action", "status", "points", "started_at", "finished_at"
    )
    for action, status, points, started, finished in queryset.iterator(chunk_size=2000):
        row = rows.setdefault(
            action,
            {
                "action": action,
                "count": 0,
                "succeeded": 0,
                "failed": 0,
                "canceled": 0,
                "active": 0,
                "points": 0,
                "durations": [],
            },
        )
        row["count"] += 1
        if status == TaskStatus.SUCCEEDED:
            row["succeeded"] += 1
            row["points"] += points
        elif status in (TaskStatus.FAILED, TaskStatus.CANCELED):
            row[status] += 1
        else:
            row["active"] += 1
        if started and finished:
            row["durations"].append((finished - started).total_seconds())
    result = []
    for row in sorted(rows.values(), key=lambda r: -r["count"]):
        durations = sorted(row.pop("durations"))
        finished = row["succeeded"] + row["failed"] + row["canceled"]
        row["successRate"] = round(100 * row["succeeded"] / finished, 1) if finished else None
        row["p50"] = _percentile(durations, 0.5)
        row["p95"] = _percentile(durations, 0.95)
        result.append(row)
    return result
