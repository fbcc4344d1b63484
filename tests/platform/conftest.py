"""Platform plumbing on the production configuration: several web processes on one socket, the
bounded PostgreSQL pool under overload, the Redis broker's doorbell (docs/adr/0014).

These tests need PostgreSQL and Redis: on the embedded defaults they are deselected, not skipped
(CI's second run is the PostgreSQL + Redis one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def on_postgres_and_redis() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")) and bool(
        os.environ.get("REDIS_URL")
    )


def pytest_collection_modifyitems(config, items):
    if on_postgres_and_redis():
        return
    here = str(Path(__file__).parent)
    mine = [item for item in items if str(item.path).startswith(here)]
    if mine:
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if not str(item.path).startswith(here)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def admin_url() -> str:
    return os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"


@pytest.fixture
def fresh_database():
    """A database of its own (``name, url``), dropped afterwards."""
    name = f"podi_platform_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name, os.environ["DATABASE_URL"].rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def up_env(tmp_path, fresh_database):
    """Environment for a ``manage.py up`` subprocess on its own database and Redis prefix."""
    env = {**os.environ, "PODI_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    for name in ("PUBLIC_BASE_URL", "OSS_CALLBACK_URL", "HOST", "PORT", "WEB_CONCURRENCY"):
        env.pop(name, None)
    env["DATABASE_URL"] = fresh_database[1]
    env["DATABASE_POOL"] = "true"  # production's default (the in-process suite turns it off)
    env["REDIS_PREFIX"] = f"podi-platform-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    env["PODI_ADMIN_PASSWORD"] = "platform test passphrase"
    return env


def start_up(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "up", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(process: subprocess.Popen, marker: str, timeout: float = 240) -> str:
    output = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if marker in line or (not line and process.poll() is not None):
            break
    return "".join(output)


def stop(process: subprocess.Popen, timeout: float = 20) -> str:
    if process.poll() is None:
        process.terminate()
    try:
        rest, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        rest, _ = process.communicate()
    return rest
