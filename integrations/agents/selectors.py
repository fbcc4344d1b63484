"""Reads of the agent protocol: fetch-or-404 for the admin API, and the token-bound reads of the
agent API, which check a verified token against the rows in one call.

Token checks, in order: the route's scope (403 ``AGENT_TOKEN_SCOPE_INVALID``); the agent named by
the token exists and the token's version is the agent's current one (401 ``AGENT_TOKEN_INVALID``
— revoked); the agent is enabled and is the one in the path (403 ``AGENT_NOT_ALLOWED``); for task
tokens, the task in the path (or its manifest) is the token's own (403 ``AGENT_TASK_FORBIDDEN``)
and has not expired (410 ``AGENT_TASK_EXPIRED``). Ids are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from integrations.agents import error_codes as codes
from integrations.agents.models import Agent, AgentTask, AgentTaskEvent, Manifest, ManifestVersion
from integrations.agents.tokens import SCOPE_AGENT, SCOPE_TASK, AgentClaims
from podi.common import get_or_error
from podi.errors import AppError


def _same(a: Any, b: Any) -> bool:
    return hmac.compare_digest(str(a).encode(), str(b).encode())


# ------------------------------------------------------------------------------ admin reads


def agents_queryset() -> QuerySet[Agent]:
    return Agent.objects.select_related("executor", "manifest_version__manifest")


def agent_get(*, agent_id: Any) -> Agent:
    return get_or_error(agents_queryset(), agent_id, codes.AGENT_NOT_FOUND)


def manifests_queryset() -> QuerySet[Manifest]:
    return Manifest.objects.select_related("latest_version")


def manifest_get(*, manifest_id: Any) -> Manifest:
    return get_or_error(manifests_queryset(), manifest_id, codes.MANIFEST_NOT_FOUND)


def agent_tasks_queryset() -> QuerySet[AgentTask]:
    return AgentTask.objects.select_related("manifest_version__manifest")


def agent_task_get(*, agent: Agent, task_id: Any) -> AgentTask:
    """One of ``agent``'s tasks with its events (404 ``AGENT_TASK_NOT_FOUND`` otherwise)."""
    task = (
        agent_tasks_queryset()
        .prefetch_related(
            Prefetch("events", queryset=AgentTaskEvent.objects.order_by("created_at", "pk"))
        )
        .filter(agent=agent, public_id=str(task_id))
        .first()
    )
    if task is None:
        raise AppError(codes.AGENT_TASK_NOT_FOUND)
    return task


# ------------------------------------------------------------------------------ token-bound


def _agent_of(claims: AgentClaims) -> Agent:
    agent = Agent.objects.select_related("executor").filter(pk=claims.agent_id).first()
    if agent is None:
        raise AppError(codes.AGENT_TOKEN_INVALID, "The token names no registered agent.")
    if not _same(claims.version, agent.token_version):
        raise AppError(codes.AGENT_TOKEN_INVALID, "This token was revoked; ask for a new one.")
    if not agent.enabled:
        raise AppError(codes.AGENT_NOT_ALLOWED, "This agent is disabled.")
    return agent


def agent_for_token(*, claims: AgentClaims, agent_id: Any) -> Agent:
    """The agent of an ``agent``-scope token, which must be the agent in the path."""
    if claims.scope != SCOPE_AGENT:
        raise AppError(
            codes.AGENT_TOKEN_SCOPE_INVALID,
            f"This route needs an agent token, not a {claims.scope} token.",
        )
    agent = _agent_of(claims)
    if not _same(agent_id, agent.pk):
        raise AppError(codes.AGENT_NOT_ALLOWED, "The token belongs to another agent.")
    return agent


def agent_task_for_token(*, claims: AgentClaims, task_id: Any, now=None) -> AgentTask:
    """The agent task of a ``task``-scope token, which must be the task in the path."""
    if claims.scope != SCOPE_TASK:
        raise AppError(
            codes.AGENT_TOKEN_SCOPE_INVALID,
            f"This route needs a task token, not an {claims.scope} token.",
        )
    agent = _agent_of(claims)
    task = (
        AgentTask.objects.select_related("manifest_version__manifest")
        .filter(public_id=claims.task_id)
        .first()
    )
    if task is None or not _same(task.agent_id, agent.pk) or not _same(task_id, task.public_id):
        raise AppError(codes.AGENT_TASK_FORBIDDEN)
    task.agent = agent
    if task.is_expired(now or timezone.now()):
        raise AppError(codes.AGENT_TASK_EXPIRED)
    return task


def manifest_for_token(*, claims: AgentClaims, manifest_id: Any, now=None) -> ManifestVersion:
    """The manifest version of the token's task, which must be the manifest in the path."""
    task = agent_task_for_token(claims=claims, task_id=claims.task_id or "", now=now)
    version = task.manifest_version
    if version is None or not _same(manifest_id, version.manifest_id):
        raise AppError(codes.AGENT_TASK_FORBIDDEN, "The token's task does not use this manifest.")
    return version
