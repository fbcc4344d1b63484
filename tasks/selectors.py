"""Reads of the tasks app, with the access rule built in (docs/architecture.md §5): a user sees
their own tasks and batches; staff and service-account keys with ``tasks:read`` everyone's."""

from __future__ import annotations

from django.db import connection
from django.db.models import Count, QuerySet

from integrations.models import Executor
from podi.access import READ, Principal
from podi.common import RowReader
from podi.errors import AppError
from tasks import error_codes as codes
from tasks.models import TERMINAL_STATUSES, Task, TaskBatch, TaskStatus, TaskTemplate

AREA = "tasks"


def tasks_visible_to(principal: Principal, *, action: str = READ) -> QuerySet[Task]:
    """The tasks ``principal`` may see (``action="read"``) or change (``"write"``): its user's,
    or every user's for staff and service-account keys with ``tasks:<action>``
    (docs/architecture.md §5)."""
    if not principal.has_scope(AREA, action):
        return Task.objects.none()
    if principal.acts_for_anyone(AREA, action):
        return Task.objects.all()
    return Task.objects.filter(user_id=principal.user_id)


# A task by its public id and the rows its detail names, each read with a SELECT compiled once
# per process (ADR 0028): compiling the joined ``select_related`` query cost every read of a
# task (``GET /api/tasks/v1/{id}``, the apps' poll) more CPU than the query itself.
_TASK = RowReader(Task, "public_id")
_EXECUTOR = RowReader(Executor, "pk")
_BATCH = RowReader(TaskBatch, "pk")


def task_get_for_principal(principal: Principal, task_id: str, *, action: str = READ) -> Task:
    """The task, if ``principal`` may see (or change) it; 404 ``TASK_NOT_FOUND`` otherwise.

    The rule is ``tasks_visible_to``'s, for one row (``Principal.may_act_for``). The task comes
    with its executor and batch (the detail names them)."""
    task = _TASK.get(task_id) if isinstance(task_id, str) else None
    if task is None or not principal.may_act_for(task.user_id, AREA, action):
        raise AppError(codes.TASK_NOT_FOUND)
    if task.executor_id is not None:
        task.executor = _EXECUTOR.get(task.executor_id)
    if task.batch_id is not None:
        task.batch = _BATCH.get(task.batch_id)
    return task


def task_owner_sql() -> str:
    """The owner of the task whose public id is the parameter, as SQL (``owner_sql`` of
    ``podi.access.register_owner_lookup``): a freeze checks it inside its own statement."""
    table = connection.ops.quote_name(Task._meta.db_table)
    return f"SELECT user_id FROM {table} WHERE public_id = %s"  # noqa: S608


def task_owner_ids(task_ids: list[str]) -> dict[str, int]:
    """{task public id: owner user id} for the tasks that exist (``podi.access.owners_of``).

    Every freeze that names a task asks this, so it is one plain indexed read: the ORM's query
    compilation cost a freeze more CPU than the read itself."""
    table = connection.ops.quote_name(Task._meta.db_table)
    marks = ", ".join(["%s"] * len(task_ids))
    with connection.cursor() as cursor:
        # Only our own table name is interpolated; the ids are parameters.
        cursor.execute(
            f"SELECT public_id, user_id FROM {table} WHERE public_id IN ({marks})",  # noqa: S608
            list(task_ids),
        )
        return dict(cursor.fetchall())


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
    (ids of the principal's own tasks, ids of others' tasks it may see — the rule of
    ``tasks_visible_to``)."""
    own, foreign = set(), set()
    anyone = principal.acts_for_anyone(AREA, READ)
    for public_id, user_id in task_owner_ids(task_ids).items():
        if user_id == principal.user_id:
            own.add(public_id)
        elif anyone:
            foreign.add(public_id)
    return own, foreign


def tasks_live_holds(hold_ids: list[str]) -> set[str]:
    """The wallet's live-hold check (registered in ``TasksConfig.ready``): the ids among
    ``hold_ids`` that belong to a queued or running task, which will settle them itself."""
    return set(
        Task.objects.filter(
            status__in=[TaskStatus.QUEUED, TaskStatus.RUNNING], hold_id__in=hold_ids
        ).values_list("hold_id", flat=True)
    )


def batches_visible_to(principal: Principal, *, action: str = READ) -> QuerySet[TaskBatch]:
    """The batches ``principal`` may see: the same rule as ``tasks_visible_to``."""
    if not principal.has_scope(AREA, action):
        return TaskBatch.objects.none()
    if principal.acts_for_anyone(AREA, action):
        return TaskBatch.objects.all()
    return TaskBatch.objects.filter(user_id=principal.user_id)


def batch_get_for_principal(principal: Principal, batch_id: str, *, action: str = READ):
    """The batch, if ``principal`` may see it; 404 ``BATCH_NOT_FOUND`` otherwise."""
    queryset = batches_visible_to(principal, action=action)
    batch = queryset.filter(public_id=batch_id).first() if isinstance(batch_id, str) else None
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
