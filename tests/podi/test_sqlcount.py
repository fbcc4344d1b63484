"""The benches' opt-in SQL statement counter (``PODI_SQL_COUNT_DIR``, podi/sqlcount.py), in a
real subprocess: it counts by HTTP route and by thread, and writes its totals at exit."""

import json
import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import threading
import django
django.setup()
from django.db import connection
from django.test import Client

with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
    cursor.execute("select 2")

def other():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 3")
    connection.close()

thread = threading.Thread(target=other, name="bench-7")
thread.start()
thread.join()
client = Client(HTTP_HOST="localhost")
print("health", client.get("/health").status_code)
print("events", client.get("/api/tasks/v1/tsk_abcdefgh123/events").status_code)
"""


def _run(tmp_path, extra_env: dict) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL", "PODI_SQL_COUNT_DIR"}
    }
    env.update({"PODI_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "podi.settings"})
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_statements_are_counted_by_route_and_thread_and_written_at_exit(tmp_path):
    counts_dir = tmp_path / "sql"
    result = _run(tmp_path, {"PODI_SQL_COUNT_DIR": str(counts_dir)})
    assert result.returncode == 0, result.stderr
    assert "health 200" in result.stdout
    assert "events 401" in result.stdout  # no token: refused before the view reads anything
    files = list(counts_dir.glob("sql-*.json"))
    assert len(files) == 1
    body = json.loads(files[0].read_text())
    counts = body["counts"]
    assert counts["thread:MainThread"] == {"total": 2, "SELECT": 2}
    assert counts["thread:bench-N"] == {"total": 1, "SELECT": 1}
    assert counts["http:GET /health"]["total"] >= 1  # the health check reads the database
    # a request's statements carry its route only, ids folded (nothing else was asked here)
    assert {label for label in counts if not label.startswith("thread:")} <= {
        "http:GET /health",
        "http:GET /api/tasks/v1/{id}/events",
    }


def test_off_by_default(tmp_path):
    result = _run(tmp_path, {})
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.rglob("sql-*.json"))
    assert "podi.sqlcount.SqlCountMiddleware" not in settings.MIDDLEWARE
