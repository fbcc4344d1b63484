"""Heartbeats, offline/online transitions with controlled time, the executor leaving and
re-entering dispatch, and alerts pushed to staff."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.agents.actors import agents_liveness
from integrations.agents.models import Agent, Alert
from integrations.agents.services.agents import agent_update
from integrations.agents.services.liveness import agent_heartbeat, agents_mark_offline
from integrations.models import Executor
from integrations.services import executor_health_check, executor_update
from podi.realtime.models import Event
from podi.reconcile import registered_steps
from tasks.models import Task, TaskStatus
from tasks.services import task_submit, tasks_dispatch_pending
from tests.servers.comfyui import ComfyUITestServer
from tests.tasks.conftest import make_ability

pytestmark = pytest.mark.django_db

INTERVAL = 30


def staff_alerts(user) -> list[dict]:
    return [e.payload for e in Event.objects.filter(user=user, type="agent.alert").order_by("seq")]


def executor_of(agent) -> Executor:
    return Executor.objects.get(pk=agent.executor_id)


def test_heartbeat_records_metrics_versions_and_health(agent, agent_client):
    body = {
        "status": "ok",
        "cpu": 12.5,
        "mem": 40,
        "diskFreeGb": 512.25,
        "gpu": [{"name": "RTX 4090", "util": 87, "memUsedMb": 20000}],
        "agentVersion": "1.4.2",
        "comfyuiVersion": "0.8.0",
        "metrics": {"queue": 0, "temperatureC": 61},
    }
    before = timezone.now()
    response = agent_client.post(f"/api/agent/v1/agents/{agent.pk}/heartbeat", body)
    assert response.status_code == 200, response.json()
    answer = response.json()
    assert answer["agentId"] == agent.pk
    assert answer["status"] == "online"
    assert answer["heartbeatInterval"] == INTERVAL
    assert answer["offlineAfter"] == 3 * INTERVAL
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ONLINE
    assert agent.last_heartbeat_at >= before
    assert agent.status_changed_at == agent.last_heartbeat_at
    assert (agent.agent_version, agent.comfyui_version) == ("1.4.2", "0.8.0")
    assert agent.reported_status == "ok"
    assert agent.metrics == {
        "cpu": 12.5,
        "mem": 40.0,
        "diskFreeGb": 512.25,
        "gpu": [{"name": "RTX 4090", "util": 87, "memUsedMb": 20000}],
        "metrics": {"queue": 0, "temperatureC": 61},
    }
    executor = executor_of(agent)
    assert executor.health_status == "healthy"
    assert executor.health_details["source"] == "agent"
    assert executor.health_checked_at == agent.last_heartbeat_at
    # A first heartbeat (unknown → online) raises no alert.
    assert Alert.objects.count() == 0


def test_bad_heartbeat_bodies_change_nothing(agent, agent_client):
    url = f"/api/agent/v1/agents/{agent.pk}/heartbeat"
    for body in ({"cpu": "lots"}, {"diskFreeGb": -1}, {"metrics": [1, 2]}, {"status": "x" * 33}):
        response = agent_client.post(url, body)
        assert response.status_code == 400, body
        assert response.json()["code"] == "VALIDATION_ERROR"
    agent.refresh_from_db()
    assert agent.status == Agent.Status.UNKNOWN and agent.last_heartbeat_at is None


def test_offline_after_three_missed_intervals_then_back_online(agent, staff, owner):
    t0 = timezone.now()
    agent_heartbeat(agent=agent, now=t0)
    # Exactly three intervals of silence is still online; a moment more is not.
    assert agents_mark_offline(now=t0 + timedelta(seconds=3 * INTERVAL)) == 0
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ONLINE
    late = t0 + timedelta(seconds=3 * INTERVAL + 1)
    assert agents_mark_offline(now=late) == 1
    agent.refresh_from_db()
    assert agent.status == Agent.Status.OFFLINE
    assert agent.status_changed_at == late
    executor = executor_of(agent)
    assert executor.health_status == "unhealthy"
    assert "agent-1" in executor.health_error and "offline" in executor.health_error
    assert executor.health_details["source"] == "agent"
    assert executor.is_dispatchable is False
    alert = Alert.objects.get()
    assert (alert.type, alert.severity, alert.source) == ("agent.offline", "critical", "podi")
    assert alert.payload == {
        "lastHeartbeatAt": t0.isoformat().replace("+00:00", "Z"),
        "executor": executor.pk,
    }
    # Pushed to staff (persisted, so a staff socket that reconnects gets it), not to users.
    pushed = staff_alerts(staff)
    assert [p["type"] for p in pushed] == ["agent.offline"]
    assert pushed[0]["alertId"] == alert.public_id
    assert pushed[0]["agentName"] == "agent-1"
    assert staff_alerts(owner) == []
    # Another pass does not alert twice.
    assert agents_mark_offline(now=late + timedelta(seconds=60)) == 0
    assert Alert.objects.count() == 1

    # The next heartbeat brings it back, with an "online" alert.
    back = late + timedelta(seconds=120)
    agent_heartbeat(agent=agent, now=back)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ONLINE
    assert agent.status_changed_at == back
    executor = executor_of(agent)
    assert executor.health_status == "healthy"
    assert executor.health_error == ""
    assert executor.is_dispatchable is True
    assert [p["type"] for p in staff_alerts(staff)] == ["agent.offline", "agent.online"]
    online = Alert.objects.get(type="agent.online")
    assert online.severity == "info"
    assert online.payload["offlineSince"] == late.isoformat().replace("+00:00", "Z")


def test_executor_leaves_and_reenters_dispatch(agent, owner):
    executor = executor_of(agent)
    ability = make_ability("sync-check", [executor], points=0)
    t0 = timezone.now() - timedelta(minutes=10)
    agent_heartbeat(agent=agent, now=t0)
    assert agents_mark_offline() == 1  # ten minutes of silence

    task = task_submit(user=owner, action=ability.code, params={})
    assert tasks_dispatch_pending() == 0
    task.refresh_from_db()
    assert task.status == TaskStatus.QUEUED
    assert task.executor_id is None

    agent_heartbeat(agent=agent)
    assert tasks_dispatch_pending() == 1
    task.refresh_from_db()
    assert task.status == TaskStatus.RUNNING
    assert task.executor_id == executor.pk


def test_health_checks_cannot_bring_back_an_offline_agents_executor(agent):
    with ComfyUITestServer() as comfy:
        executor_update(executor=executor_of(agent), base_url=comfy.url)
        assert executor_health_check(executor=executor_of(agent)).health_status == "healthy"
        agent_heartbeat(agent=agent, now=timezone.now() - timedelta(minutes=5))
        agents_mark_offline()
        # ComfyUI answers, but the agent is silent: the executor stays out of dispatch.
        checked = executor_health_check(executor=executor_of(agent))
        assert checked.health_status == "unhealthy"
        assert "offline" in checked.health_error
        assert checked.health_details["check"]["comfyuiVersion"] == "0.8.0"
        # Back online: the heartbeat and the next check agree.
        agent_heartbeat(agent=agent)
        assert executor_of(agent).health_status == "healthy"
        assert executor_health_check(executor=executor_of(agent)).health_status == "healthy"


def test_offline_pass_reasserts_unhealthy(agent):
    agent_heartbeat(agent=agent, now=timezone.now() - timedelta(minutes=5))
    agents_mark_offline()
    # Something (an old health check finishing late) marks the executor healthy again.
    Executor.objects.filter(pk=agent.executor_id).update(health_status="healthy", health_details={})
    assert agents_mark_offline() == 0
    assert executor_of(agent).health_status == "unhealthy"
    assert Alert.objects.filter(type="agent.offline").count() == 1


def test_failing_status_takes_the_executor_out(agent):
    agent_heartbeat(agent=agent, status="error")
    executor = executor_of(agent)
    assert executor.health_status == "unhealthy"
    assert executor.health_error == "Agent 'agent-1' reports 'error'."
    agent_heartbeat(agent=agent, status="ok")
    assert executor_of(agent).health_status == "healthy"


def test_a_heartbeat_does_not_hide_a_failed_health_check(agent):
    Executor.objects.filter(pk=agent.executor_id).update(
        health_status="unhealthy",
        health_error="Missing node classes: FooNode",
        health_details={"missingNodeClasses": ["FooNode"]},
    )
    agent_heartbeat(agent=agent)
    executor = executor_of(agent)
    assert executor.health_status == "unhealthy"
    assert executor.health_error == "Missing node classes: FooNode"


def test_never_seen_and_disabled_agents_are_not_marked(agent, other_agent):
    later = timezone.now() + timedelta(days=1)
    assert agents_mark_offline(now=later) == 0  # never seen: unknown stays unknown
    agent_heartbeat(agent=agent)
    agent_update(agent=agent, enabled=False)
    assert agents_mark_offline(now=later) == 0
    assert set(Agent.objects.values_list("status", flat=True)) == {"online", "unknown"}
    assert Alert.objects.count() == 0


def test_reconciler_step(agent, staff):
    assert "integrations.agents.actors.agents_liveness" in registered_steps()
    agent_heartbeat(agent=agent, now=timezone.now() - timedelta(minutes=2))
    assert agents_liveness() == 1
    assert agents_liveness() == 0
    assert [p["type"] for p in staff_alerts(staff)] == ["agent.offline"]


def test_agent_alerts(agent, agent_client, staff):
    url = f"/api/agent/v1/agents/{agent.pk}/alerts"
    response = agent_client.post(
        url,
        {
            "type": "disk_low",
            "message": "12 GB free on /models",
            "severity": "critical",
            "payload": {"freeGb": 12},
        },
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    alert = Alert.objects.get()
    assert body == {
        "id": alert.public_id,
        "agent": agent.pk,
        "source": "agent",
        "type": "disk_low",
        "severity": "critical",
        "message": "12 GB free on /models",
        "payload": {"freeGb": 12},
        "acknowledgedAt": None,
        "createdAt": body["createdAt"],
    }
    assert staff_alerts(staff)[0]["message"] == "12 GB free on /models"
    for bad in ({"message": "no type"}, {"type": "a b"}, {"type": "x", "severity": "fatal"}):
        assert agent_client.post(url, bad).status_code == 400
    assert Alert.objects.count() == 1
    assert Event.objects.filter(type="agent.alert").count() == 1
    assert Task.objects.count() == 0
