"""Pushing sync tasks to an agent on loopback that accepts, answers busy, fails, or is down."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from integrations.agents.actors import agent_tasks_push_due
from integrations.agents.models import AgentTask
from integrations.agents.push import push_task, push_url
from integrations.agents.services.agent_tasks import (
    BUSY_RETRY,
    MAX_PUSH_FAILURES,
    PUSH_BACKOFF,
    agent_task_create,
    agent_task_push,
    agent_task_push_now,
    agent_tasks_claim_pushes,
)
from integrations.agents.services.agents import agent_update
from integrations.agents.tokens import token_decode
from podi.errors import AppError
from podi.reconcile import registered_steps
from tests.conftest import Client

from .conftest import free_port

pytestmark = pytest.mark.django_db


def events(task) -> list[tuple[str, str]]:
    return list(task.events.order_by("created_at", "pk").values_list("source", "type"))


@pytest.fixture
def pointed(agent, agent_server):
    return agent_update(agent=agent, base_url=agent_server.url)


def test_accepted_push(pointed, manifest, agent_server):
    now = timezone.now()
    task = agent_task_create(
        agent=pointed, actions=["sync_models", "sync_plugins"], manifest=manifest, now=now
    )
    assert task.status == AgentTask.Status.RUNNING
    assert (task.push_attempts, task.push_failures, task.last_push_error) == (1, 0, "")
    assert task.accepted_at == now and task.started_at == now
    assert task.next_push_at is None and task.push_claimed_at is None
    assert events(task) == [("podi", "created"), ("podi", "pushed")]
    [body] = agent_server.pushes
    request = agent_server.requests_to("/tasks", method="POST")[0]
    assert request.headers["User-Agent"] == "PODI-agent-push/1"
    assert body == {
        "taskId": task.public_id,
        "agentId": pointed.pk,
        "actions": ["sync_models", "sync_plugins"],
        "manifestUrl": f"http://podi.test/api/agent/v1/manifests/{manifest.pk}",
        "manifestVersion": 1,
        "expiresAt": task.expires_at.isoformat().replace("+00:00", "Z"),
        "token": body["token"],
        "tokenExpiresAt": body["tokenExpiresAt"],
        "eventsUrl": f"http://podi.test/api/agent/v1/tasks/{task.public_id}/events",
        "completeUrl": f"http://podi.test/api/agent/v1/tasks/{task.public_id}/complete",
        "failedUrl": f"http://podi.test/api/agent/v1/tasks/{task.public_id}/failed",
    }
    claims = token_decode(body["token"])
    assert (claims.scope, claims.task_id, claims.agent_id) == ("task", task.public_id, pointed.pk)
    # The pushed token fetches exactly the pinned manifest.
    response = Client(body["token"]).get(f"/api/agent/v1/manifests/{manifest.pk}")
    assert response.status_code == 200
    assert response.json()["version"] == 1
    # Accepted means done pushing: nothing is due any more.
    assert agent_tasks_claim_pushes(now=now + timedelta(hours=1)) == []


def test_busy_agent_keeps_the_task_pending_and_the_reconciler_retries(
    pointed, manifest, agent_server
):
    agent_server.mode = "busy"
    t0 = timezone.now()
    task = agent_task_create(agent=pointed, actions=["sync_models"], manifest=manifest, now=t0)
    assert task.status == AgentTask.Status.PENDING
    assert task.push_attempts == 1 and task.push_failures == 0
    assert task.next_push_at == t0 + BUSY_RETRY
    assert task.last_push_error.startswith("The agent is busy (HTTP 409)")
    assert "atk_other" in task.last_push_error
    # Not due yet: nothing to claim.
    assert agent_tasks_claim_pushes(now=t0 + BUSY_RETRY - timedelta(seconds=1)) == []
    # Still busy on the retry: still pending, busy answers never count as failures.
    t1 = t0 + BUSY_RETRY
    assert agent_tasks_claim_pushes(now=t1) == [task.public_id]
    task = agent_task_push(task_id=task.public_id, now=t1, claimed=True)
    assert (task.status, task.push_attempts, task.push_failures) == ("pending", 2, 0)
    # The agent is free now.
    agent_server.mode = "accept"
    t2 = t1 + BUSY_RETRY
    assert agent_tasks_claim_pushes(now=t2) == [task.public_id]
    task = agent_task_push(task_id=task.public_id, now=t2, claimed=True)
    assert task.status == AgentTask.Status.RUNNING
    assert task.last_push_error == ""
    assert events(task) == [
        ("podi", "created"),
        ("podi", "busy"),
        ("podi", "busy"),
        ("podi", "pushed"),
    ]
    assert len(agent_server.pushes) == 3
    assert len({p["token"] for p in agent_server.pushes}) == 3  # a fresh token per push


def test_agent_down_is_recorded_and_retried_with_a_bound(agent, manifest):
    port = free_port()  # nobody listens here
    agent_update(agent=agent, base_url=f"http://127.0.0.1:{port}")
    t = timezone.now()
    task = agent_task_create(agent=agent, actions=["sync_models"], manifest=manifest, now=t)
    assert task.status == AgentTask.Status.PENDING
    assert task.push_failures == 1
    assert f"Cannot connect to http://127.0.0.1:{port}/tasks" in task.last_push_error
    assert task.next_push_at == t + PUSH_BACKOFF[0]
    for failures in range(2, MAX_PUSH_FAILURES + 1):
        t = task.next_push_at
        assert agent_tasks_claim_pushes(now=t) == [task.public_id]
        task = agent_task_push(task_id=task.public_id, now=t, claimed=True)
        assert task.push_failures == failures
        if failures < MAX_PUSH_FAILURES:
            assert task.status == AgentTask.Status.PENDING
            assert task.next_push_at == t + PUSH_BACKOFF[failures - 1]
    assert task.status == AgentTask.Status.FAILED
    assert task.error_code == "AGENT_PUSH_FAILED"
    assert task.error_message.startswith(f"Gave up after {MAX_PUSH_FAILURES} failed pushes")
    assert task.next_push_at is None and task.finished_at == t
    assert events(task)[-1] == ("podi", "failed")
    assert [e for e in events(task) if e[1] == "push_failed"] == [("podi", "push_failed")] * (
        MAX_PUSH_FAILURES - 1
    )
    assert agent_tasks_claim_pushes(now=t + timedelta(hours=1)) == []


def test_server_errors_are_retried_and_refusals_are_final(pointed, manifest, agent_server):
    agent_server.mode = "error"
    task = agent_task_create(agent=pointed, actions=["restart"])
    assert (task.status, task.push_failures) == ("pending", 1)
    assert task.last_push_error == 'The agent answered HTTP 503: {"error": "disk full"}'
    agent_server.mode = "reject"
    task = agent_task_push_now(task=task)
    assert task.status == AgentTask.Status.FAILED
    assert task.error_code == "AGENT_PUSH_FAILED"
    assert task.error_message == (
        'The agent refused the task with HTTP 400: {"error": "unknown action"}'
    )


def test_agent_with_a_path_prefix(pointed, agent_server):
    agent_update(agent=pointed, base_url=f"{agent_server.url}/prefix/")
    task = agent_task_create(agent=pointed, actions=["restart"])
    assert task.status == AgentTask.Status.RUNNING
    assert agent_server.requests[-1].path == "/prefix/tasks"
    assert agent_server.pushes[-1]["manifestUrl"] is None


def test_push_timeout_is_bounded(pointed, agent_server, settings):
    settings.EXECUTOR_HTTP_TIMEOUT = 1
    agent_server.mode, agent_server.delay = "slow", 3
    started = time.monotonic()
    task = agent_task_create(agent=pointed, actions=["restart"])
    assert time.monotonic() - started < 2.5
    assert task.status == AgentTask.Status.PENDING
    assert "did not answer within 1 s" in task.last_push_error


def test_only_http_urls_are_pushed_to(agent):
    with pytest.raises(AppError) as caught:
        agent_update(agent=agent, base_url="file:///etc/passwd")
    assert caught.value.details == {"fields": {"baseUrl": ["Must be an http(s) URL with a host."]}}
    assert push_url("gopher://127.0.0.1/") is None
    outcome = push_task(base_url="ftp://agent.local", body={})
    assert (outcome.kind, outcome.status_code) == ("permanent", None)


def test_claims_are_exclusive_and_disabled_agents_are_skipped(pointed, agent_server):
    agent_server.mode = "busy"
    t0 = timezone.now()
    task = agent_task_create(agent=pointed, actions=["restart"], now=t0)
    due = t0 + BUSY_RETRY
    assert agent_tasks_claim_pushes(now=due) == [task.public_id]
    assert agent_tasks_claim_pushes(now=due) == []  # claimed: nobody else pushes it
    # A claim held by a process that died is taken over after the lease.
    assert agent_tasks_claim_pushes(now=due + timedelta(minutes=2)) == [task.public_id]
    AgentTask.objects.filter(pk=task.pk).update(push_claimed_at=None)
    agent_update(agent=pointed, enabled=False)
    assert agent_tasks_claim_pushes(now=due + timedelta(minutes=3)) == []


def test_disabled_agents_get_no_new_tasks(pointed):
    agent_update(agent=pointed, enabled=False)
    with pytest.raises(AppError) as caught:
        agent_task_create(agent=pointed, actions=["restart"])
    assert caught.value.code == "AGENT_DISABLED"
    assert AgentTask.objects.count() == 0


def test_reconciler_step_claims_due_pushes(pointed, agent_server):
    assert "integrations.agents.actors.agent_tasks_push_due" in registered_steps()
    task = agent_task_create(agent=pointed, actions=["restart"], push=False)
    assert agent_tasks_push_due() == 1
    task.refresh_from_db()
    assert task.push_claimed_at is not None
    assert agent_tasks_push_due() == 0


@pytest.mark.django_db(transaction=True)
def test_reconciler_push_through_a_real_worker(pointed, agent_server, worker):
    agent_server.mode = "busy"
    task = agent_task_create(agent=pointed, actions=["restart"])
    assert task.status == AgentTask.Status.PENDING
    agent_server.mode = "accept"
    AgentTask.objects.filter(pk=task.pk).update(next_push_at=timezone.now())
    assert agent_tasks_push_due() == 1
    agent_server.wait_until(lambda: len(agent_server.pushes) == 2, timeout=10)

    def running():
        task.refresh_from_db()
        return task.status == AgentTask.Status.RUNNING

    agent_server.wait_until(running, timeout=10)
    assert task.push_attempts == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_pushes_reach_the_agent_once(pointed, agent_server):
    agent_server.mode, agent_server.delay = "slow", 0.3
    task = agent_task_create(agent=pointed, actions=["restart"], push=False)

    def push(_):
        try:
            return agent_task_push(task_id=task.public_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(push, range(4)))
    assert len(agent_server.pushes) == 1
    task.refresh_from_db()
    assert (task.status, task.push_attempts) == ("running", 1)
