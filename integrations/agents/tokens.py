"""Agent JWTs: HS256, a ``kid`` header naming one of ``AGENT_JWT_SECRETS``, scope ``agent`` or
``task``, a nonce (``jti``) and an expiry.

* The first kid of ``AGENT_JWT_SECRETS`` signs; every listed kid verifies, so a secret is rotated
  by putting a new kid first and removing the old one once its tokens have expired.
* Every token carries the agent's ``token_version`` (``ver``); bumping it revokes them all.
* A ``task`` token also names its agent task (``tid``) and is valid for that task only.

Nothing here touches the database: :func:`token_decode` proves a token was signed by PODI and is
unexpired; ``integrations.agents.selectors`` then checks it against the rows.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from django.conf import settings
from django.utils import timezone

from integrations.agents import error_codes as codes
from podi.errors import AppError

ALGORITHM = "HS256"
ISSUER = "podi"
AUDIENCE = "podi-agent"
SCOPE_AGENT = "agent"
SCOPE_TASK = "task"
SCOPES = (SCOPE_AGENT, SCOPE_TASK)


@dataclass(frozen=True)
class MintedToken:
    """A freshly signed token. ``token`` is shown once and never stored."""

    token: str
    scope: str
    kid: str
    jti: str
    issued_at: datetime
    expires_at: datetime

    @property
    def expires_in(self) -> int:
        return int((self.expires_at - self.issued_at).total_seconds())


@dataclass(frozen=True)
class AgentClaims:
    """What a verified token says."""

    agent_id: int
    scope: str
    version: int
    jti: str
    kid: str
    task_id: str | None
    expires_at: datetime


def _secrets() -> dict[str, str]:
    return dict(settings.AGENT_JWT_SECRETS or {})


def signing_kid() -> str:
    """The kid that signs new tokens (the first configured one)."""
    configured = _secrets()
    if not configured:
        raise AppError(codes.AGENT_SIGNING_UNCONFIGURED)
    return next(iter(configured))


def token_encode(
    *,
    agent_id: int,
    scope: str,
    version: int,
    ttl_seconds: int,
    task_id: str | None = None,
    now: datetime | None = None,
) -> MintedToken:
    if scope not in SCOPES:
        raise ValueError(f"unknown agent token scope {scope!r}")
    if (scope == SCOPE_TASK) != bool(task_id):
        raise ValueError("a task token names exactly one task; an agent token none")
    kid = signing_kid()
    issued = (now or timezone.now()).replace(microsecond=0)
    expires = issued + timedelta(seconds=max(int(ttl_seconds), 1))
    jti = secrets.token_urlsafe(18)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(agent_id),
        "scope": scope,
        "ver": int(version),
        "jti": jti,
        "iat": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
    }
    if task_id:
        claims["tid"] = task_id
    token = jwt.encode(claims, _secrets()[kid], algorithm=ALGORITHM, headers={"kid": kid})
    return MintedToken(
        token=token, scope=scope, kid=kid, jti=jti, issued_at=issued, expires_at=expires
    )


def token_decode(raw: str) -> AgentClaims:
    """Verify signature, kid, issuer, audience and expiry. Raises ``AGENT_TOKEN_INVALID``,
    ``AGENT_TOKEN_KID_INVALID`` or ``AGENT_TOKEN_EXPIRED``; never anything else."""
    try:
        header = jwt.get_unverified_header(raw)
    except jwt.InvalidTokenError:
        raise AppError(codes.AGENT_TOKEN_INVALID, "The agent token is not a JWT.") from None
    if header.get("alg") != ALGORITHM:
        raise AppError(codes.AGENT_TOKEN_INVALID, f"Agent tokens are signed with {ALGORITHM}.")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AppError(codes.AGENT_TOKEN_KID_INVALID, "The token has no kid header.")
    secret = _secrets().get(kid)
    if secret is None:
        raise AppError(codes.AGENT_TOKEN_KID_INVALID, f"Key id {kid[:64]!r} is not configured.")
    try:
        claims = jwt.decode(
            raw,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise AppError(codes.AGENT_TOKEN_EXPIRED) from None
    except jwt.InvalidTokenError as exc:
        raise AppError(codes.AGENT_TOKEN_INVALID, f"The agent token is not valid: {exc}.") from None
    scope, version, task_id = claims.get("scope"), claims.get("ver"), claims.get("tid")
    try:
        agent_id = int(claims["sub"])
    except (TypeError, ValueError):
        raise AppError(codes.AGENT_TOKEN_INVALID, "The token names no agent.") from None
    if (
        scope not in SCOPES
        or isinstance(version, bool)
        or not isinstance(version, int)
        or (scope == SCOPE_TASK and not isinstance(task_id, str))
        or (scope == SCOPE_AGENT and task_id is not None)
    ):
        raise AppError(codes.AGENT_TOKEN_INVALID, "The token's claims are malformed.")
    return AgentClaims(
        agent_id=agent_id,
        scope=scope,
        version=version,
        jti=str(claims["jti"]),
        kid=kid,
        task_id=task_id,
        expires_at=datetime.fromtimestamp(int(claims["exp"]), tz=UTC),
    )
