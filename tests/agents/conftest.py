"""Shared rows for the agent tests: a ComfyUI executor, an agent, a manifest, tokens, servers."""

from __future__ import annotations

import copy
import socket

import dramatiq
import pytest

from integrations.agents.services.agents import agent_create
from integrations.agents.services.manifests import manifest_create
from integrations.agents.services.tokens import agent_token_mint
from integrations.services import executor_create
from podi.runtime import import_actor_modules
from tests.conftest import Client

from .server import AgentTestServer

SECRET_1 = "k1-secret-for-tests-0123456789abcdefghij"
SECRET_2 = "k2-secret-for-tests-abcdefghij0123456789"
SHA_A = "a" * 64
SHA_B = "b" * 64

MANIFEST = {
    "comfyui": {"repo": "https://github.com/comfyanonymous/ComfyUI", "commit": "0123456789abcdef"},
    "plugins": [
        {
            "name": "ComfyUI-Impact-Pack",
            "repo": "https://github.com/ltdrdata/ComfyUI-Impact-Pack",
            "commit": "abcdef1",
        }
    ],
    "workflows": [
        {
            "name": "txt2img",
            "url": "https://files.example.com/wf/txt2img.json",
            "sha256": SHA_B,
            "destPath": "user/default/workflows/txt2img.json",
        }
    ],
    "models": [
        {
            "name": "SDXL base",
            "url": "https://files.example.com/models/sdxl.safetensors",
            "sha256": SHA_A,
            "size": 6_938_078_334,
            "destPath": "models/checkpoints/sdxl.safetensors",
        }
    ],
}


def manifest_content() -> dict:
    return copy.deepcopy(MANIFEST)


@pytest.fixture(autouse=True)
def agent_secrets(settings):
    settings.AGENT_JWT_SECRETS = {"k1": SECRET_1}
    settings.AGENT_HEARTBEAT_INTERVAL = 30
    settings.AGENT_TASK_TOKEN_TTL = 3600
    settings.AGENT_HEARTBEAT_TOKEN_TTL = 86400
    settings.PUBLIC_BASE_URL = "http://podi.test"
    return settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def agent_server():
    with AgentTestServer() as server:
        yield server


@pytest.fixture
def executor(db):
    return executor_create(name="gpu-1", kind="comfyui", base_url="http://127.0.0.1:1")


@pytest.fixture
def agent(executor):
    return agent_create(name="agent-1", executor=executor, base_url="http://127.0.0.1:1")


@pytest.fixture
def other_agent(db):
    executor = executor_create(name="gpu-2", kind="comfyui", base_url="http://127.0.0.1:2")
    return agent_create(name="agent-2", executor=executor, base_url="http://127.0.0.1:2")


@pytest.fixture
def manifest(db):
    return manifest_create(name="sdxl-stack", content=manifest_content())


@pytest.fixture
def agent_token(agent) -> str:
    return agent_token_mint(agent=agent).token


@pytest.fixture
def agent_client(agent_token) -> Client:
    return Client(agent_token)


@pytest.fixture
def worker(transactional_db):
    """A real Dramatiq worker on the configured broker (stub or Redis), in this process."""
    broker = dramatiq.get_broker()
    import_actor_modules()
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield worker
    worker.stop(timeout=10_000)
    broker.flush_all()
