"""``manage.py up`` as a real subprocess: serves health, docs and admin; stops cleanly on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def up_env(tmp_path, django_db_blocker):
    env = {**os.environ, "PODI_DATA_DIR": str(tmp_path), "PODI_ADMIN_PASSWORD": ""}
    env.pop("PODI_ADMIN_PASSWORD")
    env["PYTHONUNBUFFERED"] = "1"
    database_url = os.environ.get("DATABASE_URL")
    if database_url:
        # A database of its own, dropped afterwards.

        name = f"podi_up_{os.getpid()}_{int(time.time())}"
        admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        env["DATABASE_URL"] = database_url.rsplit("/", 1)[0] + f"/{name}"
        env["REDIS_PREFIX"] = f"podi-up-{os.getpid()}"
        yield env
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        yield env


def test_up_serves_and_stops_on_sigterm(up_env):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--port", str(port)],
        cwd=ROOT,
        env=up_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    output = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            output.append(line)
            if "PODI is up" in line or process.poll() is not None:
                break
        assert "PODI is up" in "".join(output), "".join(output)
        assert any("Created the first admin user 'admin' with password:" in line for line in output)

        with httpx.Client(base_url=base, timeout=10) as http:
            health = http.get("/health")
            assert health.status_code == 200, health.text
            assert health.json()["status"] == "ok"
            docs = http.get("/api/docs/")
            assert docs.status_code == 200
            assert "swagger-ui" in docs.text
            css = http.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css")
            assert css.status_code == 200
            login = http.get("/admin/login/")
            assert login.status_code == 200
            assert "PODI console" in login.text

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=15)
        elapsed = time.monotonic() - started
        assert process.returncode == 0, "".join(output) + rest
        assert elapsed < 10
        assert "Stopping" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
