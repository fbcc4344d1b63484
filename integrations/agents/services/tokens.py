"""Mint and revoke an agent's tokens (the JWT codec is ``integrations.agents.tokens``)."""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from integrations.agents import error_codes as codes
from integrations.agents.models import Agent, AgentTask
from integrations.agents.tokens import SCOPE_AGENT, SCOPE_TASK, MintedToken, token_encode
from podi.errors import AppError

logger = logging.getLogger("podi.agents")


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
