"""The PostgreSQL pool's size: every PODI process's pool together stays within the configured
share of max_connections (settings are read in a fresh interpreter, as at start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "d = s.DATABASES['default']; "
    "print(json.dumps({'pool': d['OPTIONS'].get('pool'), 'age': d.get('CONN_MAX_AGE'), "
    "'web': s.WEB_CONCURRENCY, 'engine': d['ENGINE'], "
    "'binding': d['OPTIONS'].get('server_side_binding'), "
    "'prepare': d['OPTIONS'].get('prepare_threshold', 'unset')}))"
)


def settings_with(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "WEB_", "REDIS"))}
    base.update(PODI_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="podi.settings", **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


PG = "postgres://podi@db.invalid:5432/podi"  # never connected to: settings only


def test_the_pool_shares_max_connections_among_processes(tmp_path):
    # 100 × 80 % = 80 connections for 4 web + worker + reconciler = 6 processes: 13 each.
    got = settings_with(
        tmp_path, DATABASE_URL=PG, REDIS_URL="redis://127.0.0.1:6379/0", WEB_CONCURRENCY="4"
    )
    assert got["pool"]["max_size"] == 13 and got["pool"]["min_size"] == 2
    assert got["pool"]["timeout"] == 5 and got["age"] == 0
    assert 13 * (4 + 2) <= 80
    # Django's backend with a pool that hands out its warmest connection (ADR 0035).
    assert got["engine"] == "podi.db"

    got = settings_with(
        tmp_path,
        DATABASE_URL=PG,
        REDIS_URL="redis://127.0.0.1:6379/0",
        WEB_CONCURRENCY="2",
        DATABASE_MAX_CONNECTIONS="300",
        DATABASE_POOL_SHARE="50",
        DATABASE_POOL_PROCESSES="10",
    )
    assert got["pool"]["max_size"] == 15  # 300 × 50 % / 10


def test_explicit_pool_size_and_opt_out(tmp_path):
    got = settings_with(tmp_path, DATABASE_URL=PG, DATABASE_POOL_MAX="7", DATABASE_POOL_MIN="0")
    assert (got["pool"]["max_size"], got["pool"]["min_size"]) == (7, 0)
    got = settings_with(
        tmp_path, DATABASE_URL=PG, DATABASE_POOL="false", DATABASE_CONN_MAX_AGE="60"
    )
    assert got["pool"] is None and got["age"] == 60
    assert got["engine"] == "django.db.backends.postgresql"  # no pool: Django's own backend


def test_statements_are_bound_server_side_and_prepared_unless_opted_out(tmp_path):
    """ADR 0025: on PostgreSQL, a statement run 5 times on a connection is prepared there."""
    got = settings_with(tmp_path, DATABASE_URL=PG)
    assert (got["binding"], got["prepare"]) == (True, 5)
    got = settings_with(tmp_path, DATABASE_URL=PG, DATABASE_PREPARE_THRESHOLD="2")
    assert (got["binding"], got["prepare"]) == (True, 2)
    # For a pooler that cannot keep prepared statements: Django's client-side binding.
    got = settings_with(tmp_path, DATABASE_URL=PG, DATABASE_PREPARED_STATEMENTS="false")
    assert (got["binding"], got["prepare"]) == (None, "unset")
    assert settings_with(tmp_path)["binding"] is None  # SQLite: nothing to prepare


def test_embedded_defaults_run_one_web_process_and_no_pool(tmp_path):
    got = settings_with(tmp_path)
    assert got["web"] == 1 and got["pool"] is None and got["engine"].endswith("sqlite3")


def test_several_web_processes_need_redis(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "WEB_", "REDIS"))}
    base.update(
        PODI_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="podi.settings", WEB_CONCURRENCY="2"
    )
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert "WEB_CONCURRENCY > 1 needs REDIS_URL" in out.stderr
