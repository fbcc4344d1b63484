"""Writes of the agent protocol: agents and their tokens, heartbeats and liveness, alerts,
manifests and their versions, agent tasks and their push.

Times: every service that decides on time takes ``now=`` (default: the current time), so tests
drive liveness and expiry without waiting.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from integrations import error_codes as codes
from integrations.agents.manifests import clean_manifest
from integrations.agents.push import PushOutcome, push_task
from integrations.agents.tokens import SCOPE_AGENT, SCOPE_TASK, MintedToken, token_encode
from integrations.executors.base import HealthResult
from integrations.models import (
    Agent,
    AgentTask,
    AgentTaskAction,
    AgentTaskEvent,
    Alert,
    Executor,
    ExecutorKind,
    HealthStatus,
    Manifest,
    ManifestVersion,
)
from integrations.services import _delete, _required_text, _set_fields, _unique_name
from integrations.validation import check_http_url
from podi.errors import AppError, validation_error
from podi.ids import new_id
from podi.realtime.events import emit

logger = logging.getLogger("podi.agents")

ALERT_EVENT = "agent.alert"
# Heartbeat statuses that mean "my ComfyUI is not serving": the executor leaves dispatch.
FAILING_STATUSES = frozenset({"error", "unhealthy", "down"})
MISSED_HEARTBEATS = 3

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
ACTIVE = (AgentTask.Status.PENDING, AgentTask.Status.RUNNING)
SOURCE_PODI, SOURCE_AGENT = "podi", "agent"


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


MAX_JSON_BYTES = 32 * 1024


def _bounded_json(value: Any, field: str, *, must_be_object: bool = False) -> Any:
    """What agents send to be stored (metrics, payloads): JSON, an object when asked, ≤ 32 KB."""
    if must_be_object and value is not None and not isinstance(value, dict):
        raise validation_error({field: ["Must be an object."]})
    try:
        size = len(json.dumps(value, separators=(",", ":")).encode())
    except (TypeError, ValueError):
        raise validation_error({field: ["Must be JSON."]}) from None
    if size > MAX_JSON_BYTES:
        raise validation_error({field: [f"At most {MAX_JSON_BYTES // 1024} KB of JSON."]})
    return value


# ============================================================================== agents


def _clean_agent_executor(executor: Executor, *, exclude_agent: int | None = None) -> Executor:
    if executor.kind != ExecutorKind.COMFYUI:
        raise validation_error(
            {
                "executor": [
                    f"Agents run next to ComfyUI executors; {executor.name!r} is {executor.kind}."
                ]
            }
        )
    other = Agent.objects.filter(executor=executor)
    if exclude_agent is not None:
        other = other.exclude(pk=exclude_agent)
    taken = other.values_list("name", flat=True).first()
    if taken is not None:
        raise validation_error({"executor": [f"Already linked to agent {taken!r}."]})
    return executor


@transaction.atomic
def agent_create(
    *,
    name: str,
    executor: Executor,
    base_url: str,
    enabled: bool = True,
    description: str = "",
) -> Agent:
    name = _required_text(name, "name", 100)
    _unique_name(Agent, "name", name)
    _clean_agent_executor(executor)
    try:
        with transaction.atomic():
            return Agent.objects.create(
                name=name,
                executor=executor,
                base_url=check_http_url(base_url, "baseUrl"),
                enabled=enabled,
                description=description or "",
            )
    except IntegrityError:  # a concurrent registration took the name or the executor
        raise validation_error(
            {"name": ["Taken by a concurrent registration; try again."]}
        ) from None


@transaction.atomic
def agent_update(*, agent: Agent, **changes: Any) -> Agent:
    if "name" in changes:
        changes["name"] = _required_text(changes["name"], "name", 100)
        _unique_name(Agent, "name", changes["name"], exclude_pk=agent.pk)
    if "executor" in changes:
        _clean_agent_executor(changes["executor"], exclude_agent=agent.pk)
    if "base_url" in changes:
        changes["base_url"] = check_http_url(changes["base_url"], "baseUrl")
    if "description" in changes:
        changes["description"] = changes["description"] or ""
    fields = _set_fields(agent, changes, {"name", "executor", "base_url", "enabled", "description"})
    agent.save(update_fields=[*fields, "updated_at"])
    return agent


def agent_delete(*, agent: Agent) -> None:
    """Delete an agent with its tasks, events and alerts (its tokens die with it)."""
    _delete(agent, "agent")


# ============================================================================== tokens


def agent_token_mint(*, agent: Agent, now: datetime | None = None) -> MintedToken:
    """A new ``agent``-scope token (``AGENT_HEARTBEAT_TOKEN_TTL``). Shown once: only its kid,
    nonce and times are kept, for the console. Earlier tokens stay valid until they expire or
    :func:`agent_tokens_revoke` is called."""
    now = now or timezone.now()
    agent.refresh_from_db(fields=["token_version"])
    minted = token_encode(
        agent_id=agent.pk,
        scope=SCOPE_AGENT,
        version=agent.token_version,
        ttl_seconds=settings.AGENT_HEARTBEAT_TOKEN_TTL,
        now=now,
    )
    Agent.objects.filter(pk=agent.pk).update(
        token_kid=minted.kid,
        token_jti=minted.jti,
        token_issued_at=minted.issued_at,
        token_expires_at=minted.expires_at,
        updated_at=now,
    )
    agent.refresh_from_db()
    logger.info("agent %s: token minted (kid %s, jti %s)", agent.name, minted.kid, minted.jti)
    return minted


def agent_tokens_revoke(*, agent: Agent, now: datetime | None = None) -> Agent:
    """Revoke every token of the agent at once, agent and task tokens alike (they carry the
    agent's token version; this bumps it). Mint a new one afterwards."""
    now = now or timezone.now()
    Agent.objects.filter(pk=agent.pk).update(
        token_version=F("token_version") + 1, tokens_revoked_at=now, updated_at=now
    )
    agent.refresh_from_db()
    logger.warning("agent %s: all tokens revoked (version %s)", agent.name, agent.token_version)
    return agent


def agent_task_token(*, task: AgentTask, now: datetime | None = None) -> MintedToken:
    """A ``task``-scope token bound to ``task``; it lives ``min(AGENT_TASK_TOKEN_TTL, time to the
    task's expiry)``."""
    now = now or timezone.now()
    remaining = int((task.expires_at - now).total_seconds())
    if remaining <= 0:
        raise AppError(codes.AGENT_TASK_EXPIRED)
    version = Agent.objects.filter(pk=task.agent_id).values_list("token_version", flat=True).get()
    return token_encode(
        agent_id=task.agent_id,
        scope=SCOPE_TASK,
        version=version,
        ttl_seconds=min(settings.AGENT_TASK_TOKEN_TTL, remaining),
        task_id=task.public_id,
        now=now,
    )


# ============================================================================== alerts


def alert_payload(alert: Alert) -> dict[str, Any]:
    return {
        "alertId": alert.public_id,
        "agentId": alert.agent_id,
        "agentName": alert.agent.name,
        "source": alert.source,
        "type": alert.type,
        "severity": alert.severity,
        "message": alert.message,
        "payload": alert.payload,
        "createdAt": iso(alert.created_at),
    }


def _alert_record(
    *,
    agent: Agent,
    type: str,
    message: str,
    severity: str,
    payload: dict | None,
    source: str,
    now: datetime,
) -> Alert:
    """Record an alert and push it to every active staff user (``agent.alert`` events, sent
    after commit). Call inside a transaction."""
    alert = Alert.objects.create(
        public_id=new_id("alr"),
        agent=agent,
        source=source,
        type=type,
        severity=severity,
        message=message,
        payload=payload or {},
        created_at=now,
    )
    body = alert_payload(alert)
    staff_ids = (
        get_user_model()
        .objects.filter(is_staff=True, is_active=True)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for user_id in staff_ids:
        emit(user_id=user_id, type=ALERT_EVENT, payload=body)
    return alert


def alert_raise(
    *,
    agent: Agent,
    type: str,
    message: str = "",
    severity: str = Alert.Severity.WARNING,
    payload: dict | None = None,
    now: datetime | None = None,
) -> Alert:
    """An alert sent by the agent (``POST /api/agent/v1/agents/{id}/alerts``)."""
    type = _required_text(type, "type", 64)
    if severity not in Alert.Severity.values:
        raise validation_error({"severity": [f"One of {', '.join(Alert.Severity.values)}."]})
    payload = _bounded_json(payload, "payload", must_be_object=True)
    with transaction.atomic():
        return _alert_record(
            agent=agent,
            type=type,
            message=str(message or "")[:2000],
            severity=severity,
            payload=payload,
            source=SOURCE_AGENT,
            now=now or timezone.now(),
        )


def alert_acknowledge(*, alert: Alert, user, now: datetime | None = None) -> Alert:
    Alert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True).update(
        acknowledged_at=now or timezone.now(), acknowledged_by=user
    )
    alert.refresh_from_db()
    return alert


# ============================================================================== liveness


def _executor_set_health(
    executor_id: int, *, status: str, error: str, details: dict, now: datetime
) -> None:
    Executor.objects.filter(pk=executor_id).update(
        health_status=status,
        health_error=error[:2000],
        health_details=details,
        health_checked_at=now,
        updated_at=now,
    )


def _agent_health_details(agent: Agent, **extra: Any) -> dict[str, Any]:
    return {"source": "agent", "agent": agent.pk, "agentName": agent.name, **extra}


def _offline_error(agent: Agent) -> str:
    since = iso(agent.last_heartbeat_at) or "never"
    return (
        f"Agent {agent.name!r} is offline: no heartbeat since {since} "
        f"({MISSED_HEARTBEATS} intervals of {settings.AGENT_HEARTBEAT_INTERVAL} s missed)."
    )


def agent_heartbeat(
    *,
    agent: Agent,
    status: str = "ok",
    cpu: float | None = None,
    mem: float | None = None,
    disk_free_gb: float | None = None,
    gpu: Any = None,
    agent_version: str = "",
    comfyui_version: str = "",
    metrics: dict | None = None,
    now: datetime | None = None,
) -> Agent:
    """Record a heartbeat: the agent is online, its versions and metrics are stored, and its
    executor's health follows.

    The executor becomes ``healthy`` when its health is unknown or was set ``unhealthy`` by the
    agent (offline, or a failing status); ``status`` of ``error``/``unhealthy``/``down`` (the
    agent's ComfyUI is not serving) makes it ``unhealthy``. An ``unhealthy`` from the executor's
    own health check stands until the next check: a heartbeat proves the agent, not ComfyUI.
    An agent that was offline comes back with an ``agent.online`` alert."""
    now = now or timezone.now()
    reported = _required_text(status or "ok", "status", 32).lower()
    snapshot = {
        "cpu": cpu,
        "mem": mem,
        "diskFreeGb": disk_free_gb,
        "gpu": _bounded_json(gpu, "gpu"),
        "metrics": _bounded_json(metrics or {}, "metrics", must_be_object=True),
    }
    with transaction.atomic():
        locked = Agent.objects.select_for_update().select_related("executor").get(pk=agent.pk)
        was = locked.status
        changes: dict[str, Any] = {
            "status": Agent.Status.ONLINE,
            "last_heartbeat_at": now,
            "reported_status": reported,
            "metrics": snapshot,
            "updated_at": now,
        }
        if agent_version:
            changes["agent_version"] = agent_version[:64]
        if comfyui_version:
            changes["comfyui_version"] = comfyui_version[:64]
        if was != Agent.Status.ONLINE:
            changes["status_changed_at"] = now
        Agent.objects.filter(pk=locked.pk).update(**changes)
        executor = Executor.objects.select_for_update().get(pk=locked.executor_id)
        from_agent = (executor.health_details or {}).get("source") == "agent"
        if reported in FAILING_STATUSES:
            _executor_set_health(
                executor.pk,
                status=HealthStatus.UNHEALTHY,
                error=f"Agent {locked.name!r} reports {reported!r}.",
                details=_agent_health_details(locked, reportedStatus=reported),
                now=now,
            )
        elif executor.health_status == HealthStatus.UNKNOWN or (
            executor.health_status == HealthStatus.UNHEALTHY and from_agent
        ):
            _executor_set_health(
                executor.pk,
                status=HealthStatus.HEALTHY,
                error="",
                details=_agent_health_details(locked, heartbeatAt=iso(now)),
                now=now,
            )
        if was == Agent.Status.OFFLINE:
            _alert_record(
                agent=locked,
                type=Alert.ONLINE,
                message=f"Agent {locked.name!r} is back online; executor {executor.name!r} "
                "takes tasks again.",
                severity=Alert.Severity.INFO,
                payload={"offlineSince": iso(locked.status_changed_at), "executor": executor.pk},
                source=SOURCE_PODI,
                now=now,
            )
    if was == Agent.Status.OFFLINE:
        logger.info("agent %s back online", locked.name)
    agent.refresh_from_db()
    return agent


def agents_mark_offline(*, now: datetime | None = None) -> int:
    """Reconciler step body: enabled agents whose last heartbeat is older than three intervals
    go offline; their executor turns ``unhealthy`` (dispatch skips it), and an ``agent.offline``
    alert is recorded and pushed to staff. Agents never seen (``unknown``) are left alone.
    Returns how many agents went offline in this pass."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=MISSED_HEARTBEATS * settings.AGENT_HEARTBEAT_INTERVAL)
    overdue = Q(enabled=True, status=Agent.Status.ONLINE, last_heartbeat_at__lt=cutoff)
    went = 0
    for pk in list(Agent.objects.filter(overdue).values_list("pk", flat=True)[:500]):
        with transaction.atomic():
            # Guarded: a heartbeat that lands first (or another pass) makes this a no-op.
            if not Agent.objects.filter(overdue, pk=pk).update(
                status=Agent.Status.OFFLINE, status_changed_at=now, updated_at=now
            ):
                continue
            agent = Agent.objects.select_related("executor").get(pk=pk)
            error = _offline_error(agent)
            _executor_set_health(
                agent.executor_id,
                status=HealthStatus.UNHEALTHY,
                error=error,
                details=_agent_health_details(
                    agent, offlineSince=iso(now), lastHeartbeatAt=iso(agent.last_heartbeat_at)
                ),
                now=now,
            )
            _alert_record(
                agent=agent,
                type=Alert.OFFLINE,
                message=f"{error} Executor {agent.executor.name!r} gets no new tasks.",
                severity=Alert.Severity.CRITICAL,
                payload={
                    "lastHeartbeatAt": iso(agent.last_heartbeat_at),
                    "executor": agent.executor_id,
                },
                source=SOURCE_PODI,
                now=now,
            )
            went += 1
        logger.warning("agent %s offline (last heartbeat %s)", agent.name, agent.last_heartbeat_at)
    # Keep offline agents' executors out of dispatch even if something marked them healthy since.
    for agent in (
        Agent.objects.filter(enabled=True, status=Agent.Status.OFFLINE)
        .exclude(executor__health_status=HealthStatus.UNHEALTHY)
        .select_related("executor")
    ):
        _executor_set_health(
            agent.executor_id,
            status=HealthStatus.UNHEALTHY,
            error=_offline_error(agent),
            details=_agent_health_details(agent, offlineSince=iso(agent.status_changed_at)),
            now=now,
        )
    return went


def executor_agent_gate(executor: Executor, result: HealthResult) -> HealthResult:
    """What a health check of ``executor`` may store: while its (enabled) agent is offline the
    executor stays ``unhealthy`` whatever ComfyUI answered, so dispatch keeps skipping it."""
    agent = Agent.objects.filter(
        executor=executor, enabled=True, status=Agent.Status.OFFLINE
    ).first()
    if agent is None:
        return result
    return HealthResult(
        status=HealthStatus.UNHEALTHY,
        error=_offline_error(agent),
        details=_agent_health_details(
            agent, offlineSince=iso(agent.status_changed_at), check=result.details
        ),
    )


# ============================================================================== manifests


def _next_manifest_version(
    manifest: Manifest, content: dict, changelog: str, created_by
) -> ManifestVersion:
    for _attempt in range(3):
        try:
            with transaction.atomic():
                locked = Manifest.objects.select_for_update().get(pk=manifest.pk)
                latest = locked.versions.aggregate(n=Max("version"))["n"] or 0
                version = ManifestVersion.objects.create(
                    manifest=locked,
                    version=latest + 1,
                    content=content,
                    changelog=changelog or "",
                    created_by=created_by,
                )
                Manifest.objects.filter(pk=locked.pk).update(
                    latest_version=version, updated_at=timezone.now()
                )
            manifest.refresh_from_db()
            return version
        except IntegrityError:  # a concurrent writer took the number (SQLite has no row lock)
            continue
    raise validation_error({"manifest": ["Could not allocate a version number; try again."]})


def manifest_create(
    *,
    name: str,
    content: Any,
    description: str = "",
    changelog: str = "",
    created_by=None,
) -> Manifest:
    """Create a manifest and its version 1. ``content`` is validated (``clean_manifest``)."""
    name = _required_text(name, "name", 100)
    _unique_name(Manifest, "name", name)
    content = clean_manifest(content)
    with transaction.atomic():
        manifest = Manifest.objects.create(name=name, description=description or "")
        _next_manifest_version(manifest, content, changelog, created_by)
    manifest.refresh_from_db()
    return manifest


def manifest_version_create(
    *, manifest: Manifest, content: Any, changelog: str = "", created_by=None
) -> ManifestVersion:
    """Validate and store the next version; the same content as the latest one makes none."""
    content = clean_manifest(content)
    latest = manifest.latest_version
    if latest is not None and latest.content == content:
        return latest
    return _next_manifest_version(manifest, content, changelog, created_by)


@transaction.atomic
def manifest_update(
    *,
    manifest: Manifest,
    content: Any = None,
    changelog: str = "",
    created_by=None,
    **changes: Any,
) -> Manifest:
    """Rename or describe a manifest; ``content`` adds a version when it differs."""
    if "name" in changes:
        changes["name"] = _required_text(changes["name"], "name", 100)
        _unique_name(Manifest, "name", changes["name"], exclude_pk=manifest.pk)
    if "description" in changes:
        changes["description"] = changes["description"] or ""
    fields = _set_fields(manifest, changes, {"name", "description"})
    if fields:
        manifest.save(update_fields=[*fields, "updated_at"])
    if content is not None:
        manifest_version_create(
            manifest=manifest, content=content, changelog=changelog, created_by=created_by
        )
    manifest.refresh_from_db()
    return manifest


def manifest_delete(*, manifest: Manifest) -> None:
    """409 RESOURCE_IN_USE while an agent task refers to one of its versions."""
    _delete(manifest, "manifest")


# ============================================================================== agent tasks


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


def _task_event(
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
        _task_event(
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


def _agent_task_fail(
    task: AgentTask, *, code: str, message: str, now: datetime, source: str, payload=None
) -> None:
    task.status = AgentTask.Status.FAILED
    task.finished_at = now
    task.error_code = code[:64]
    task.error_message = message
    task.next_push_at = None
    task.push_claimed_at = None
    _task_event(task, source=source, type="failed", message=message, payload=payload or {}, now=now)


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
            _task_event(
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
            _task_event(
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
                _agent_task_fail(
                    task,
                    code="AGENT_PUSH_FAILED",
                    message=why,
                    now=now,
                    source=SOURCE_PODI,
                    payload=details,
                )
            else:
                task.next_push_at = now + PUSH_BACKOFF[task.push_failures - 1]
                _task_event(
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
            _task_event(task, source=SOURCE_PODI, type="expired", message=message, now=now)
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
    type = _required_text(type or "progress", "type", 32)
    if progress is not None and (isinstance(progress, bool) or not 0 <= int(progress) <= 100):
        raise validation_error({"progress": ["An integer from 0 to 100."]})
    payload = _bounded_json(payload, "payload", must_be_object=True)
    with transaction.atomic():
        locked = AgentTask.objects.select_for_update().get(pk=task.pk)
        _check_open(locked, now)
        _start(locked, now)
        if progress is not None:
            locked.progress = int(progress)
        locked.save()
        event = _task_event(
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
    result = _bounded_json(result, "result")
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
        _task_event(
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
    payload = _bounded_json(payload, "payload", must_be_object=True)
    with transaction.atomic():
        locked = AgentTask.objects.select_for_update().get(pk=task.pk)
        if locked.status == AgentTask.Status.FAILED:
            return locked
        _check_open(locked, now)
        _start(locked, now)
        _agent_task_fail(
            locked,
            code=str(error_code or "AGENT_TASK_FAILED"),
            message=str(error_message or "The agent reported a failure.")[:4000],
            now=now,
            source=SOURCE_AGENT,
            payload=payload,
        )
        locked.save()
    return locked
