"""``manage.py up`` as a real subprocess: serves health, docs and admin; stops cleanly on SIGTERM."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import httpx
import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def up_env(tmp_path, django_db_blocker):
    env = {**os.environ, "PODI_DATA_DIR": str(tmp_path), "PODI_ADMIN_PASSWORD": ""}
    env.pop("PODI_ADMIN_PASSWORD")
    for name in ("PUBLIC_BASE_URL", "OSS_CALLBACK_URL", "HOST", "PORT"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DATABASE_POOL", None)  # production's default: the pool on PostgreSQL
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
        created = [line for line in output if "Created the first admin user 'admin'" in line]
        assert created and "with password: " in created[0], "".join(output)
        password = created[0].split("with password: ", 1)[1].strip()

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

            # Signed upload URLs point at the port this server listens on (not 8000) when
            # PUBLIC_BASE_URL is not set.
            tokens = http.post(
                "/api/auth/v1/login", json={"username": "admin", "password": password}
            )
            assert tokens.status_code == 200, tokens.text
            bearer = {"Authorization": f"Bearer {tokens.json()['accessToken']}"}
            key = http.post("/api/media/v1/upload-key", json={}, headers=bearer)
            assert key.status_code == 200, key.text
            grant = http.post(
                "/api/media/v1/sts",
                json={
                    "uploadKey": key.json()["uploadKey"],
                    "fileName": "a.png",
                    "mimeType": "image/png",
                    "fileSize": 10,
                },
            )
            assert grant.status_code == 200, grant.text
            assert grant.json()["uploadUrl"].startswith(f"{base}/media-upload/")

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


def test_ensure_admin_creates_the_first_admin_once(db, settings):

    settings.PODI_ADMIN_USERNAME = "root-op"
    settings.PODI_ADMIN_PASSWORD = "a long operator passphrase"
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    assert out.getvalue() == (
        "Created the first admin user 'root-op' (password from PODI_ADMIN_PASSWORD)\n"
    )
    user = get_user_model().objects.get(username="root-op")
    assert (user.is_staff, user.is_superuser, user.is_active) == (True, True, True)
    assert user.check_password("a long operator passphrase")

    settings.PODI_ADMIN_PASSWORD = "another one"
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    assert out.getvalue() == "A staff user exists already; nothing to do.\n"
    user.refresh_from_db()
    assert user.check_password("a long operator passphrase")
    assert get_user_model().objects.count() == 1


def test_ensure_admin_generates_a_password_when_none_is_set(db, settings):

    settings.PODI_ADMIN_USERNAME = "admin"
    settings.PODI_ADMIN_PASSWORD = None
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    match = re.match(r"Created the first admin user 'admin' with password: (\S+)\n", out.getvalue())
    assert match, out.getvalue()
    assert get_user_model().objects.get(username="admin").check_password(match.group(1))


def _start(args, env):
    return subprocess.Popen(
        [sys.executable, "manage.py", "up", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(process, marker: str, timeout: float = 60) -> str:
    output = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if marker in line or (not line and process.poll() is not None):
            break
    return "".join(output)


def test_up_roles_run_one_piece_each(up_env):
    """--role web serves HTTP only; --role worker and --role reconciler serve nothing, run their
    piece and stop on SIGTERM; only --migrate (or --role all) migrates and creates the admin."""
    setup = _start(["--role", "worker", "--migrate"], up_env)
    port = free_port()
    web = None
    try:
        text = _read_until(setup, "PODI worker is up")
        assert "Applying database migrations" in text, text
        assert "Created the first admin user 'admin' with password:" in text, text
        assert "Worker running" in text and "Reconciler running" not in text, text

        web = _start(["--role", "web", "--port", str(port)], up_env)
        text = _read_until(web, "PODI is up")
        assert "PODI is up" in text, text
        assert "Applying database migrations" not in text and "Worker running" not in text, text
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200, health.text

        reconciler = _start(["--role", "reconciler"], up_env)
        try:
            text = _read_until(reconciler, "PODI reconciler is up")
            assert "Reconciler running" in text and "Worker running" not in text, text
            steps = text.split("Reconciler steps: ", 1)[1].split("\n", 1)[0].split(", ")
            assert {
                "tasks.actors.reconcile_tasks",
                "integrations.actors.executors_health_refresh",
                "podi.realtime.webhooks.reconcile_webhook_deliveries",
            } <= set(steps), steps
            assert "Applying database migrations" not in text, text
        finally:
            reconciler.send_signal(signal.SIGTERM)
            rest, _ = reconciler.communicate(timeout=15)
        assert reconciler.returncode == 0, rest
        assert "Stopping" in rest
    finally:
        for process in (setup, web):
            if process is None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                rest, _ = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                rest, _ = process.communicate()
            assert process.returncode == 0, rest


def test_an_unreachable_database_answers_503_with_a_code(tmp_path):
    """A web host whose database is down answers 503 DATABASE_UNAVAILABLE (no 500, no traceback)."""
    if os.environ.get("DATABASE_URL"):
        database_url = f"postgres://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens
    else:
        database_url = f"sqlite:///{tmp_path}/no/such/dir/db.sqlite3"  # cannot be opened
    env = {**os.environ, "DATABASE_URL": database_url, "PODI_DATA_DIR": str(tmp_path)}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DATABASE_POOL", None)  # with the pool, which keeps retrying in the background
    port = free_port()
    web = _start(["--role", "web", "--port", str(port)], env)
    try:
        text = _read_until(web, "PODI is up")
        assert "PODI is up" in text, text
        base = f"http://127.0.0.1:{port}"
        login = httpx.post(
            f"{base}/api/auth/v1/login", json={"username": "a", "password": "b"}, timeout=15
        )
        assert login.status_code == 503, login.text
        assert login.json()["code"] == "DATABASE_UNAVAILABLE"
        assert login.headers["Retry-After"] == "2"
        health = httpx.get(f"{base}/health", timeout=15)
        assert health.status_code == 503
    finally:
        web.send_signal(signal.SIGTERM)
        rest, _ = web.communicate(timeout=15)
    assert "Traceback" not in rest, rest
