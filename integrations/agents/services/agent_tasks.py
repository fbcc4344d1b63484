"""Agent tasks from PODI's side: create one, claim its push, push it to the agent (outside any
transaction) and record how that went, with retries and back-off."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from integrations.agents import error_codes as codes
from integrations.agents.models import Agent, AgentTask, AgentTaskAction, AgentTaskEvent, Manifest
from integrations.agents.push import PushOutcome, push_task
from integrations.agents.services.common import SOURCE_PODI, iso
from integrations.agents.services.tokens import agent_task_token
from integrations.agents.tokens import MintedToken
from podi.errors import AppError, validation_error
from podi.ids import new_id

logger = logging.getLogger("podi.agents")

# Push: a busy agent (409) is asked again every BUSY_RETRY until the task expires; other failures
# are retried after PUSH_BACKOFF[n] and the task fails after MAX_PUSH_FAILURES of them.
BUSY_RETRY = timedelta(seconds=10)
PUSH_BACKOFF = (
    timedelta(seconds=5),
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
)
MAX_PUSH_FAILURES = len(PUSH_BACKOFF) + 1
# A push claim older than this belongs to a process that died mid-push.
PUSH_LEASE = timedelta(seconds=60)
TASK_TTL_MIN, TASK_TTL_MAX = 60, 7 * 86400
SYNC_ACTIONS = frozenset(
    {AgentTaskAction.SYNC_MODELS, AgentTaskAction.SYNC_PLUGINS, AgentTaskAction.SYNC_WORKFLOWS}
)


def _clean_actions(actions: Any) -> list[str]:
    if not isinstance(actions, list) or not actions:
        raise validation_error({"actions": ["Give at least one action."]})
    known = AgentTaskAction.values
    bad = [str(a) for a in actions if a not in known]
    if bad:
        raise validation_error(
            {"actions": [f"Unknown action(s) {', '.join(bad)}; one of {', '.join(known)}."]}
        )
    chosen = set(actions)
    return [action for action in known if action in chosen]  # canonical order, no duplicates


def agent_task_event_record(
    task: AgentTask,
    *,
    source: str,
    type: str,
    message: str = "",
    progress: int | None = None,
    payload: dict | None = None,
    now: datetime,
) -> AgentTaskEvent:
    return AgentTaskEvent.objects.create(
        task=task,
        source=source,
        type=type,
        message=message,
        progress=progress,
        payload=payload or {},
        created_at=now,
    )


def agent_task_mark_failed(
    task: AgentTask, *, code: str, message: str, now: datetime, source: str, payload=None
) -> None:
    task.status = AgentTask.Status.FAILED
    task.finished_at = now
    task.error_code = code[:64]
    task.error_message = message
    task.next_push_at = None
    task.push_claimed_at = None
    agent_task_event_record(
        task, source=source, type="failed", message=message, payload=payload or {}, now=now
    )


def agent_task_create(
    *,
    agent: Agent,
    actions: list[str],
    manifest: Manifest | None = None,
    manifest_version: int | None = None,
    ttl_seconds: int | None = None,
    created_by=None,
    push: bool = True,
    now: datetime | None = None,
) -> AgentTask:
    """Create a pending sync task for ``agent`` (pinned to the manifest's latest version, or to
    ``manifest_version``) and, with ``push``, push it at once. Sync actions need a manifest;
    ``restart`` alone does not. The task expires ``ttl_seconds`` after creation (default
    ``AGENT_TASK_TOKEN_TTL``)."""
    now = now or timezone.now()
    actions = _clean_actions(actions)
    if not agent.enabled:
        raise AppError(codes.AGENT_DISABLED)
    if SYNC_ACTIONS & set(actions) and manifest is None:
        raise validation_error({"manifest": ["Required for sync actions."]})
    version = None
    if manifest is not None:
        if manifest_version is None:
            version = manifest.latest_version
        else:
            version = manifest.versions.filter(version=manifest_version).first()
            if version is None:
                raise validation_error(
                    {
                        "manifestVersion": [
                            f"Manifest {manifest.name!r} has no version {manifest_version}."
                        ]
                    }
                )
        if version is None:
            raise validation_error({"manifest": ["This manifest has no version yet."]})
    ttl = settings.AGENT_TASK_TOKEN_TTL if ttl_seconds is None else ttl_seconds
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not TASK_TTL_MIN <= ttl <= TASK_TTL_MAX:
        raise validation_error(
            {"ttlSeconds": [f"An integer from {TASK_TTL_MIN} to {TASK_TTL_MAX}."]}
        )
    with transaction.atomic():
        task = AgentTask.objects.create(
            public_id=new_id("atk"),
            agent=agent,
            manifest_version=version,
            actions=actions,
            expires_at=now + timedelta(seconds=ttl),
            next_push_at=now,
            created_by=created_by,
            created_at=now,
        )
        agent_task_event_record(
            task,
            source=SOURCE_PODI,
            type="created",
            message=f"{', '.join(actions)}"
            + (f" to {version.manifest.name} v{version.version}" if version else ""),
            payload={"manifestVersion": version.version if version else None},
            now=now,
        )
    if push:
        agent_task_push(task_id=task.public_id, now=now)
    task.refresh_from_db()
    return task


def _claimable(now: datetime) -> Q:
    """Only the task's own columns, so the claim is a single-table UPDATE: PostgreSQL re-checks
    its WHERE against a row a concurrent claimer just committed (a join would make Django use
    ``id IN (subquery)``, evaluated on the old snapshot, and two claimers could both win)."""
    return Q(
        status=AgentTask.Status.PENDING,
        next_push_at__lte=now,
        expires_at__gt=now,
        agent_id__in=Agent.objects.filter(enabled=True).values("pk"),
    ) & (Q(push_claimed_at__isnull=True) | Q(push_claimed_at__lt=now - PUSH_LEASE))


def agent_task_claim_push(*, task_id: str, now: datetime | None = None) -> bool:
    """Claim one due push (guarded update): False when it is not due or someone else holds it."""
    now = now or timezone.now()
    return bool(
        AgentTask.objects.filter(_claimable(now), public_id=task_id).update(push_claimed_at=now)
    )


def agent_tasks_claim_pushes(*, now: datetime | None = None, limit: int = 50) -> list[str]:
    """Claim due pushes for the reconciler; each id is claimed once, whatever runs concurrently."""
    now = now or timezone.now()
    due = AgentTask.objects.filter(_claimable(now)).order_by("next_push_at", "pk")
    return [
        task_id
        for task_id in list(due.values_list("public_id", flat=True)[:limit])
        if agent_task_claim_push(task_id=task_id, now=now)
    ]


def agent_task_push_body(task: AgentTask, token: MintedToken) -> dict[str, Any]:
    base = f"{settings.PUBLIC_BASE_URL}/api/agent/v1"
    version = task.manifest_version
    return {
        "taskId": task.public_id,
        "agentId": task.agent_id,
        "actions": list(task.actions),
        "manifestUrl": f"{base}/manifests/{version.manifest_id}" if version else None,
        "manifestVersion": version.version if version else None,
        "expiresAt": iso(task.expires_at),
        "token": token.token,
        "tokenExpiresAt": iso(token.expires_at),
        "eventsUrl": f"{base}/tasks/{task.public_id}/events",
        "completeUrl": f"{base}/tasks/{task.public_id}/complete",
        "failedUrl": f"{base}/tasks/{task.public_id}/failed",
    }


def agent_task_push(
    *, task_id: str, now: datetime | None = None, claimed: bool = False
) -> AgentTask | None:
    """Push a pending task to its agent (``POST {baseUrl}/tasks``) and record how it went.

    Claims the push first unless ``claimed`` (the reconciler claimed it); a push that is not due
    or held by someone else does nothing. Runs the HTTP call outside any transaction."""
    given_now = now
    now = now or timezone.now()
    if not claimed and not agent_task_claim_push(task_id=task_id, now=now):
        return AgentTask.objects.filter(public_id=task_id).first()
    task = (
        AgentTask.objects.select_related("agent", "manifest_version")
        .filter(public_id=task_id)
        .first()
    )
    if task is None:
        return None
    if task.status != AgentTask.Status.PENDING or task.is_expired(now) or not task.agent.enabled:
        AgentTask.objects.filter(pk=task.pk).update(push_claimed_at=None)
        task.refresh_from_db()
        return task
    token = agent_task_token(task=task, now=now)
    outcome = push_task(base_url=task.agent.base_url, body=agent_task_push_body(task, token))
    return _agent_task_record_push(task.pk, outcome, now=given_now or timezone.now())


def agent_task_push_now(*, task: AgentTask, now: datetime | None = None) -> AgentTask:
    """Operator: push a pending task now instead of at its next retry (console action)."""
    now = now or timezone.now()
    AgentTask.objects.filter(pk=task.pk, status=AgentTask.Status.PENDING).update(next_push_at=now)
    return agent_task_push(task_id=task.public_id, now=now) or task


def _agent_task_record_push(pk: int, outcome: PushOutcome, *, now: datetime) -> AgentTask:
    with transaction.atomic():
        task = AgentTask.objects.select_for_update().get(pk=pk)
        task.push_claimed_at = None
        task.push_attempts += 1
        task.last_push_at = now
        details = {"httpStatus": outcome.status_code, "attempt": task.push_attempts}
        if task.status != AgentTask.Status.PENDING:
            # The agent reported before the push answer came back; its report wins.
            task.save()
            return task
        if outcome.kind == "accepted":
            task.status = AgentTask.Status.RUNNING
            task.accepted_at = now
            task.started_at = task.started_at or now
            task.next_push_at = None
            task.push_failures = 0
            task.last_push_error = ""
            agent_task_event_record(
                task,
                source=SOURCE_PODI,
                type="pushed",
                message=outcome.message,
                payload=details,
                now=now,
            )
        elif outcome.kind == "busy":
            task.next_push_at = now + BUSY_RETRY
            task.last_push_error = outcome.message
            agent_task_event_record(
                task,
                source=SOURCE_PODI,
                type="busy",
                message=outcome.message,
                payload=details,
                now=now,
            )
        else:
            task.push_failures += 1
            task.last_push_error = outcome.message
            if outcome.kind == "permanent" or task.push_failures >= MAX_PUSH_FAILURES:
                why = (
                    outcome.message
                    if outcome.kind == "permanent"
                    else f"Gave up after {task.push_failures} failed pushes: {outcome.message}"
                )
                agent_task_mark_failed(
                    task,
                    code="AGENT_PUSH_FAILED",
                    message=why,
                    now=now,
                    source=SOURCE_PODI,
                    payload=details,
                )
            else:
                task.next_push_at = now + PUSH_BACKOFF[task.push_failures - 1]
                agent_task_event_record(
                    task,
                    source=SOURCE_PODI,
                    type="push_failed",
                    message=f"{outcome.message} Next try at {iso(task.next_push_at)}.",
                    payload=details,
                    now=now,
                )
        task.save()
    log = logger.info if outcome.kind in ("accepted", "busy") else logger.warning
    log("agent task %s push: %s %s", task.public_id, outcome.kind, outcome.message)
    return task
