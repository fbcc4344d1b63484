"""Heartbeats and liveness: an agent that stops heartbeating goes offline and takes its
executor out of dispatch; the next heartbeat brings both back."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from integrations.agents.models import Agent, Alert
from integrations.agents.services.alerts import alert_record
from integrations.agents.services.common import SOURCE_PODI, bounded_json, iso
from integrations.executors.base import HealthResult
from integrations.models import Executor, HealthStatus
from podi.common import required_text

logger = logging.getLogger("podi.agents")

# Heartbeat statuses that mean "my ComfyUI is not serving": the executor leaves dispatch.
FAILING_STATUSES = frozenset({"error", "unhealthy", "down"})
MISSED_HEARTBEATS = 3


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
    reported = required_text(status or "ok", field="status", max_length=32).lower()
    snapshot = {
        "cpu": cpu,
        "mem": mem,
        "diskFreeGb": disk_free_gb,
        "gpu": bounded_json(gpu, "gpu"),
        "metrics": bounded_json(metrics or {}, "metrics", must_be_object=True),
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
            alert_record(
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
            alert_record(
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
