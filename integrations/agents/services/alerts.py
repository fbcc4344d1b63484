"""Agent alerts: raised by the agent or by PODI, pushed to staff, acknowledged by operators."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from integrations.agents.models import Agent, Alert
from integrations.agents.services.common import SOURCE_AGENT, bounded_json, iso
from podi.common import required_text
from podi.errors import validation_error
from podi.ids import new_id
from podi.realtime.events import emit

ALERT_EVENT = "agent.alert"


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


def alert_record(
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
    type = required_text(type, field="type", max_length=64)
    if severity not in Alert.Severity.values:
        raise validation_error({"severity": [f"One of {', '.join(Alert.Severity.values)}."]})
    payload = bounded_json(payload, "payload", must_be_object=True)
    with transaction.atomic():
        return alert_record(
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
