"""The token matrix: every way an agent token can be refused, over real HTTP routes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from integrations.agents.models import Agent, AgentTask, AgentTaskEvent
from integrations.agents.services.agent_tasks import agent_task_create
from integrations.agents.services.agents import agent_update
from integrations.agents.services.tokens import agent_task_token, agent_token_mint
from integrations.agents.tokens import token_decode, token_encode
from podi.errors import AppError
from podi.settings import _agent_jwt_secrets
from tests.conftest import Client, access_token

from .conftest import SECRET_1, SECRET_2

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def heartbeat(client: Client, agent_id: int):
    return client.post(f"/api/agent/v1/agents/{agent_id}/heartbeat", {"status": "ok", "cpu": 10})


def refused(response, status: int, code: str) -> None:
    assert (response.status_code, response.json()["code"]) == (status, code), response.json()


def untouched(agent: Agent) -> None:
    agent.refresh_from_db()
    assert agent.status == Agent.Status.UNKNOWN
    assert agent.last_heartbeat_at is None
    assert agent.metrics == {}


def claims(agent_id: int, **extra) -> dict:
    now = int(time.time())
    return {
        "iss": "podi",
        "aud": "podi-agent",
        "sub": str(agent_id),
        "scope": "agent",
        "ver": 1,
        "jti": "nonce-1",
        "iat": now,
        "exp": now + 600,
        **extra,
    }


@pytest.fixture
def task(agent, manifest):
    return agent_task_create(agent=agent, actions=["sync_models"], manifest=manifest, push=False)


@pytest.fixture
def task_token(task) -> str:
    return agent_task_token(task=task).token


# ------------------------------------------------------------------------------ the good path


def test_agent_token_shape(agent):
    minted = agent_token_mint(agent=agent)
    header = jwt.get_unverified_header(minted.token)
    assert header == {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    body = jwt.decode(minted.token, SECRET_1, algorithms=["HS256"], audience="podi-agent")
    assert body["sub"] == str(agent.pk)
    assert body["scope"] == "agent"
    assert body["ver"] == 1
    assert body["exp"] - body["iat"] == 86400
    assert len(body["jti"]) >= 20
    assert "tid" not in body
    # Each mint has its own nonce; the agent row keeps only kid, nonce and times.
    again = agent_token_mint(agent=agent)
    assert again.jti != minted.jti
    agent.refresh_from_db()
    assert (agent.token_kid, agent.token_jti) == ("k1", again.jti)
    assert again.token not in str(Agent.objects.filter(pk=agent.pk).values().get())


def test_a_valid_token_heartbeats(agent, agent_client):
    response = heartbeat(agent_client, agent.pk)
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "online"


# ------------------------------------------------------------------------------ header and JWT


def test_missing_or_malformed_header(agent, anon):
    refused(heartbeat(anon, agent.pk), 401, "AGENT_TOKEN_REQUIRED")
    basic = Client()
    basic.credentials(HTTP_AUTHORIZATION="Basic YWdlbnQ6cGFzcw==")
    refused(heartbeat(basic, agent.pk), 401, "AGENT_TOKEN_INVALID")
    refused(heartbeat(Client("not-a-jwt"), agent.pk), 401, "AGENT_TOKEN_INVALID")
    untouched(agent)


def test_user_tokens_and_service_keys_are_not_agent_tokens(agent, owner, staff, service_key):
    refused(heartbeat(Client(access_token(staff)), agent.pk), 401, "AGENT_TOKEN_KID_INVALID")
    _, raw = service_key(scopes=["admin"])
    refused(heartbeat(Client(raw), agent.pk), 401, "AGENT_TOKEN_INVALID")
    untouched(agent)


def test_wrong_signature_alg_and_claims(agent):
    forged = jwt.encode(claims(agent.pk), "x" * 40, algorithm="HS256", headers={"kid": "k1"})
    refused(heartbeat(Client(forged), agent.pk), 401, "AGENT_TOKEN_INVALID")
    hs512 = jwt.encode(claims(agent.pk), SECRET_1 * 2, algorithm="HS512", headers={"kid": "k1"})
    refused(heartbeat(Client(hs512), agent.pk), 401, "AGENT_TOKEN_INVALID")
    unsigned = jwt.encode(claims(agent.pk), None, algorithm="none", headers={"kid": "k1"})
    refused(heartbeat(Client(unsigned), agent.pk), 401, "AGENT_TOKEN_INVALID")
    wrong_aud = jwt.encode(
        claims(agent.pk, aud="podi"), SECRET_1, algorithm="HS256", headers={"kid": "k1"}
    )
    refused(heartbeat(Client(wrong_aud), agent.pk), 401, "AGENT_TOKEN_INVALID")
    no_jti = claims(agent.pk)
    del no_jti["jti"]
    token = jwt.encode(no_jti, SECRET_1, algorithm="HS256", headers={"kid": "k1"})
    refused(heartbeat(Client(token), agent.pk), 401, "AGENT_TOKEN_INVALID")
    bad_scope = jwt.encode(
        claims(agent.pk, scope="admin"), SECRET_1, algorithm="HS256", headers={"kid": "k1"}
    )
    refused(heartbeat(Client(bad_scope), agent.pk), 401, "AGENT_TOKEN_INVALID")
    untouched(agent)


def test_unknown_or_missing_kid(agent):
    unknown = jwt.encode(claims(agent.pk), SECRET_1, algorithm="HS256", headers={"kid": "k9"})
    response = heartbeat(Client(unknown), agent.pk)
    refused(response, 401, "AGENT_TOKEN_KID_INVALID")
    assert SECRET_1 not in response.content.decode()
    no_kid = jwt.encode(claims(agent.pk), SECRET_1, algorithm="HS256")
    refused(heartbeat(Client(no_kid), agent.pk), 401, "AGENT_TOKEN_KID_INVALID")
    untouched(agent)


def test_expired_token(agent):
    old = agent_token_mint(agent=agent, now=timezone.now() - timedelta(days=2))
    refused(heartbeat(Client(old.token), agent.pk), 401, "AGENT_TOKEN_EXPIRED")
    untouched(agent)


# ------------------------------------------------------------------------------ rotation


def test_kid_rotation(agent, settings):
    old = agent_token_mint(agent=agent).token
    # A new kid goes first: it signs from now on, the old one still verifies.
    settings.AGENT_JWT_SECRETS = {"k2": SECRET_2, "k1": SECRET_1}
    assert heartbeat(Client(old), agent.pk).status_code == 200
    new = agent_token_mint(agent=agent).token
    assert jwt.get_unverified_header(new)["kid"] == "k2"
    assert heartbeat(Client(new), agent.pk).status_code == 200
    # Once the old kid is removed its tokens stop at once.
    settings.AGENT_JWT_SECRETS = {"k2": SECRET_2}
    refused(heartbeat(Client(old), agent.pk), 401, "AGENT_TOKEN_KID_INVALID")
    assert heartbeat(Client(new), agent.pk).status_code == 200


def test_no_secrets_configured(agent, settings, staff_client):
    settings.AGENT_JWT_SECRETS = {}
    with pytest.raises(AppError) as caught:
        agent_token_mint(agent=agent)
    assert caught.value.code == "AGENT_SIGNING_UNCONFIGURED"
    response = staff_client.post(f"/api/admin/agents/{agent.pk}/token", {})
    refused(response, 503, "AGENT_SIGNING_UNCONFIGURED")
    agent.refresh_from_db()
    assert agent.token_issued_at is None


# ------------------------------------------------------------------------------ scope, agent


def test_wrong_scope(agent, agent_token, task, task_token):
    refused(heartbeat(Client(task_token), agent.pk), 403, "AGENT_TOKEN_SCOPE_INVALID")
    response = Client(agent_token).post(f"/api/agent/v1/tasks/{task.public_id}/complete", {})
    refused(response, 403, "AGENT_TOKEN_SCOPE_INVALID")
    response = Client(agent_token).get(
        f"/api/agent/v1/manifests/{task.manifest_version.manifest_id}"
    )
    refused(response, 403, "AGENT_TOKEN_SCOPE_INVALID")
    untouched(agent)
    task.refresh_from_db()
    assert task.status == AgentTask.Status.PENDING


def test_token_of_another_agent(agent, other_agent, agent_client):
    refused(heartbeat(agent_client, other_agent.pk), 403, "AGENT_NOT_ALLOWED")
    response = agent_client.post(
        f"/api/agent/v1/agents/{other_agent.pk}/alerts", {"type": "disk_low"}
    )
    refused(response, 403, "AGENT_NOT_ALLOWED")
    untouched(other_agent)
    assert other_agent.alerts.count() == 0


def test_disabled_agent(agent, agent_token, task, task_token):
    agent_update(agent=agent, enabled=False)
    refused(heartbeat(Client(agent_token), agent.pk), 403, "AGENT_NOT_ALLOWED")
    response = Client(task_token).post(f"/api/agent/v1/tasks/{task.public_id}/events", {})
    refused(response, 403, "AGENT_NOT_ALLOWED")
    untouched(agent)
    # Enabled again, the same tokens work.
    agent_update(agent=agent, enabled=True)
    assert heartbeat(Client(agent_token), agent.pk).status_code == 200


def test_revoked_tokens(agent, agent_token, task, task_token, staff_client):
    response = staff_client.post(f"/api/admin/agents/{agent.pk}/revoke-tokens")
    assert response.status_code == 200
    assert response.json()["token"]["version"] == 2
    refused(heartbeat(Client(agent_token), agent.pk), 401, "AGENT_TOKEN_INVALID")
    response = Client(task_token).post(f"/api/agent/v1/tasks/{task.public_id}/complete", {})
    refused(response, 401, "AGENT_TOKEN_INVALID")
    assert "revoked" in response.json()["message"]
    untouched(agent)
    # A token minted after the revocation works.
    assert heartbeat(Client(agent_token_mint(agent=agent).token), agent.pk).status_code == 200


def test_mint_with_revoke_existing(agent, agent_token, staff_client):
    response = staff_client.post(f"/api/admin/agents/{agent.pk}/token", {"revokeExisting": True})
    assert response.status_code == 201
    refused(heartbeat(Client(agent_token), agent.pk), 401, "AGENT_TOKEN_INVALID")
    assert heartbeat(Client(response.json()["token"]), agent.pk).status_code == 200


def test_deleted_agent(agent, agent_token):
    agent_id = agent.pk
    agent.delete()
    refused(heartbeat(Client(agent_token), agent_id), 401, "AGENT_TOKEN_INVALID")


# ------------------------------------------------------------------------------ task tokens


def test_task_token_is_bound_to_its_task(agent, other_agent, manifest, task, task_token):
    mine_too = agent_task_create(agent=agent, actions=["restart"], push=False)
    theirs = agent_task_create(
        agent=other_agent, actions=["sync_models"], manifest=manifest, push=False
    )
    client = Client(task_token)
    for other in (mine_too, theirs):
        for route in ("events", "complete", "failed"):
            response = client.post(f"/api/agent/v1/tasks/{other.public_id}/{route}", {})
            refused(response, 403, "AGENT_TASK_FORBIDDEN")
        other.refresh_from_db()
        assert other.status == AgentTask.Status.PENDING
        assert other.events.filter(source="agent").count() == 0
    # Another agent's task token cannot be used on this task either.
    their_token = agent_task_token(task=theirs).token
    response = Client(their_token).post(f"/api/agent/v1/tasks/{task.public_id}/complete", {})
    refused(response, 403, "AGENT_TASK_FORBIDDEN")
    assert AgentTaskEvent.objects.filter(source="agent").count() == 0


def test_task_token_lives_until_the_task_expires_at_most(agent, manifest, settings):
    now = timezone.now()
    short = agent_task_create(
        agent=agent, actions=["restart"], ttl_seconds=300, push=False, now=now
    )
    long = agent_task_create(
        agent=agent, actions=["restart"], ttl_seconds=86400, push=False, now=now
    )
    short_claims = token_decode(agent_task_token(task=short, now=now).token)
    long_claims = token_decode(agent_task_token(task=long, now=now).token)
    assert short_claims.task_id == short.public_id
    assert short_claims.scope == "task"
    assert short_claims.expires_at == short.expires_at.replace(microsecond=0)
    assert long_claims.expires_at == (now + timedelta(seconds=3600)).replace(microsecond=0)
    with pytest.raises(AppError) as caught:
        agent_task_token(task=short, now=now + timedelta(seconds=301))
    assert caught.value.code == "AGENT_TASK_EXPIRED"


def test_expired_task_token(agent, manifest):
    past = timezone.now() - timedelta(hours=3)
    task = agent_task_create(
        agent=agent, actions=["restart"], ttl_seconds=600, push=False, now=past
    )
    token = agent_task_token(task=task, now=past).token
    response = Client(token).post(f"/api/agent/v1/tasks/{task.public_id}/events", {})
    refused(response, 401, "AGENT_TOKEN_EXPIRED")


def test_encode_refuses_mismatched_scopes():
    with pytest.raises(ValueError):
        token_encode(agent_id=1, scope="task", version=1, ttl_seconds=60)
    with pytest.raises(ValueError):
        token_encode(agent_id=1, scope="agent", version=1, ttl_seconds=60, task_id="atk_x")
    with pytest.raises(ValueError):
        token_encode(agent_id=1, scope="root", version=1, ttl_seconds=60)


# ------------------------------------------------------------------------------ the setting


def test_secrets_setting_parses_in_order():
    assert _agent_jwt_secrets(None) == {}
    assert _agent_jwt_secrets("") == {}
    parsed = _agent_jwt_secrets(f" k2:{SECRET_2} , k1:{SECRET_1}:with-colon")
    assert list(parsed) == ["k2", "k1"]
    assert parsed["k1"] == f"{SECRET_1}:with-colon"


@pytest.mark.parametrize(
    ("value", "secret", "fragment"),
    [
        ("just-a-secret-0123456789abcdefghijkl", "just-a-secret", "must look like kid1:secret1"),
        (f"k1:{SECRET_1},", SECRET_1, "item 2"),
        (f"bad kid:{SECRET_1}", SECRET_1, "must look like kid1:secret1"),
        ("k1:tooshort", "tooshort", "needs >= 32 characters"),
        (f"k1:{SECRET_1},k1:{SECRET_2}", SECRET_2, "lists kid 'k1' twice"),
    ],
)
def test_malformed_secrets_setting(value, secret, fragment):
    with pytest.raises(ImproperlyConfigured) as caught:
        _agent_jwt_secrets(value)
    message = str(caught.value)
    assert fragment in message
    assert "AGENT_JWT_SECRETS" in message
    assert secret not in message


def test_start_up_stops_on_malformed_secrets(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        PODI_DATA_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="podi.settings",
        AGENT_JWT_SECRETS="k1=not-the-format",
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "AGENT_JWT_SECRETS must look like kid1:secret1,kid2:secret2" in result.stderr
    assert "not-the-format" not in result.stderr


def _run_with_data_dir(tmp_path, code: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL", "AGENT_JWT_SECRETS"}
    }
    env.update(PODI_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="podi.settings")
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unset_secrets_generate_one_in_the_data_dir(tmp_path):
    """With nothing configured agent tokens work: a token minted by one process verifies in
    another (a restart, or the worker next to the web process)."""
    minted = _run_with_data_dir(
        tmp_path,
        "from integrations.agents.tokens import token_encode\n"
        "print(token_encode(agent_id=7, scope='agent', version=1, ttl_seconds=60).token)",
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert jwt.get_unverified_header(token)["kid"] == "local"
    secret_file = tmp_path / "agent_jwt_secret"
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    assert len(secret_file.read_text()) >= 50
    assert secret_file.read_text() != (tmp_path / "secret_key").read_text()
    verified = _run_with_data_dir(
        tmp_path,
        "import sys\nfrom integrations.agents.tokens import token_decode\n"
        f"claims = token_decode({token!r})\nprint(claims.agent_id, claims.scope, claims.kid)",
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.split() == ["7", "agent", "local"]
    # Another data dir has another secret: the token is refused there.
    other = _run_with_data_dir(
        tmp_path / "other",
        "from integrations.agents.tokens import token_decode\n"
        "from podi.errors import AppError\n"
        f"try:\n    token_decode({token!r})\nexcept AppError as exc:\n    print(exc.code)",
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "AGENT_TOKEN_INVALID"
