"""Agent tasks from the agent's side (progress events, completion, failure) and their expiry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from integrations.agents import error_codes as codes
from integrations.agents.models import Agent, AgentTask, AgentTaskEvent
from integrations.agents.services.agent_tasks import (
    SYNC_ACTIONS,
    agent_task_event_record,
    agent_task_mark_failed,
)
from integrations.agents.services.common import SOURCE_AGENT, SOURCE_PODI, bounded_json, iso
from podi.common import required_text
from podi.errors import AppError, validation_error

ACTIVE = (AgentTask.Status.PENDING, AgentTask.Status.RUNNING)


def agent_tasks_expire(*, now: datetime | None = None) -> int:
    """Reconciler step body: pending or running tasks past ``expiresAt`` end ``expired``
    (error ``AGENT_TASK_EXPIRED``). Returns how many."""
    now = now or timezone.now()
    due = Q(status__in=ACTIVE, expires_at__lte=now)
    expired = 0
    for pk in list(AgentTask.objects.filter(due).values_list("pk", flat=True)[:500]):
        with transaction.atomic():
            task = AgentTask.objects.select_for_update().filter(due, pk=pk).first()
            if task is None:
                continue
            was = task.status
            message = f"Expired at {iso(task.expires_at)} while {was}" + (
                f"; last push error: {task.last_push_error}" if task.last_push_error else "."
            )
            task.status = AgentTask.Status.EXPIRED
            task.finished_at = now
            task.error_code = codes.AGENT_TASK_EXPIRED.code
            task.error_message = message
            task.next_push_at = None
            task.push_claimed_at = None
            task.save()
            agent_task_event_record(
                task, source=SOURCE_PODI, type="expired", message=message, now=now
            )
            expired += 1
    return expired


def _check_open(task: AgentTask, now: datetime) -> None:
    if task.is_expired(now):
        raise AppError(codes.AGENT_TASK_EXPIRED)
    if task.is_terminal:
        raise AppError(codes.AGENT_TASK_FINISHED, details={"status": task.status})


def _start(task: AgentTask, now: datetime) -> None:
    if task.status == AgentTask.Status.PENDING:
        task.status = AgentTask.Status.RUNNING
        task.started_at = task.started_at or now
        task.accepted_at = task.accepted_at or now
        task.next_push_at = None
        task.push_claimed_at = None


def agent_task_report(
    *,
    task: AgentTask,
    type: str = "progress",
    message: str = "",
    progress: int | None = None,
    payload: dict | None = None,
    now: datetime | None = None,
) -> AgentTaskEvent:
    """An event from the agent (``POST tasks/{id}/events``); a pending task is running from
    then on (the agent has it, so PODI stops pushing)."""
    now = now or timezone.now()
    type = required_text(type or "progress", field="type", max_length=32)
    if progress is not None and (isinstance(progress, bool) or not 0 <= int(progress) <= 100):
        raise validation_error({"progress": ["An integer from 0 to 100."]})
    payload = bounded_json(payload, "payload", must_be_object=True)
    with transaction.atomic():
        locked = AgentTask.objects.select_for_update().get(pk=task.pk)
        _check_open(locked, now)
        _start(locked, now)
        if progress is not None:
            locked.progress = int(progress)
        locked.save()
        event = agent_task_event_record(
            locked,
            source=SOURCE_AGENT,
            type=type,
            message=str(message or "")[:4000],
            progress=progress,
            payload=payload,
            now=now,
        )
    task.refresh_from_db()
    return event


def agent_task_complete(
    *,
    task: AgentTask,
    result: Any = None,
    message: str = "",
    now: datetime | None = None,
) -> AgentTask:
    """The agent finished the task. Repeating is a no-op; after another ending 409. A sync task's
    manifest version becomes the agent's ``manifest_version``."""
    now = now or timezone.now()
    result = bounded_json(result, "result")
    with transaction.atomic():
        locked = AgentTask.objects.select_for_update().get(pk=task.pk)
        if locked.status == AgentTask.Status.SUCCEEDED:
            return locked
        _check_open(locked, now)
        _start(locked, now)
        locked.status = AgentTask.Status.SUCCEEDED
        locked.progress = 100
        locked.finished_at = now
        locked.result = result
        locked.save()
        agent_task_event_record(
            locked,
            source=SOURCE_AGENT,
            type="succeeded",
            message=str(message or "")[:4000],
            progress=100,
            now=now,
        )
        if locked.manifest_version_id and SYNC_ACTIONS & set(locked.actions):
            Agent.objects.filter(pk=locked.agent_id).update(
                manifest_version_id=locked.manifest_version_id, updated_at=now
            )
    return locked


def agent_task_fail(
    *,
    task: AgentTask,
    error_code: str = "",
    error_message: str = "",
    payload: dict | None = None,
    now: datetime | None = None,
) -> AgentTask:
    """The agent gave up on the task. Repeating is a no-op; after another ending 409."""
    now = now or timezone.now()
    payload = bounded_json(payload, "payload", must_be_object=True)
    with transaction.atomic():
        locked = AgentTask.objects.select_for_update().get(pk=task.pk)
        if locked.status == AgentTask.Status.FAILED:
            return locked
        _check_open(locked, now)
        _start(locked, now)
        agent_task_mark_failed(
            locked,
            code=str(error_code or "AGENT_TASK_FAILED"),
            message=str(error_message or "The agent reported a failure.")[:4000],
            now=now,
            source=SOURCE_AGENT,
            payload=payload,
        )
        locked.save()
    return locked
