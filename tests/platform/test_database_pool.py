"""The bounded PostgreSQL pool under overload: requests past it answer 503 DATABASE_BUSY with
Retry-After, never 500; a server that refuses connections at its limit reads the same. The pool
hands out the connection returned last (ADR 0035)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx
import psycopg
import psycopg_pool
import pytest
from django.db import OperationalError, connection

from podi import error_codes as codes
from podi.db.base import WarmestFirstPool, check_idle_connection
from podi.errors import database_busy, to_app_error
from tests.platform.conftest import admin_url, free_port, read_until, start_up, stop

pytestmark = pytest.mark.timeout(400)


@contextlib.contextmanager
def web_as_admin(env: dict, **settings: str) -> Iterator[tuple[str, dict]]:
    """One web process (``manage.py up --role web``) with ``settings``: its base URL and an
    admin's bearer header; stopped afterwards, with no traceback in its output."""
    port = free_port()
    env.update(WEB_CONCURRENCY="1", **settings)
    web = start_up(["--role", "web", "--migrate", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        text = read_until(web, "PODI is up")
        assert "PODI is up" in text, text
        login = httpx.post(
            f"{base}/api/auth/v1/login",
            json={"username": "admin", "password": "platform test passphrase"},
            timeout=30,
        )
        assert login.status_code == 200, login.text
        yield base, {"Authorization": f"Bearer {login.json()['accessToken']}"}
    finally:
        rest = stop(web)
    assert "Traceback" not in rest, rest


def test_an_exhausted_pool_answers_503_database_busy_never_500(up_env, fresh_database):
    with web_as_admin(
        up_env, DATABASE_POOL_MAX="2", DATABASE_POOL_MIN="0", DATABASE_POOL_TIMEOUT="1"
    ) as (base, bearer):
        # Hold a lock every authenticated request waits on: the first two requests keep both
        # pooled connections while they wait; the others find the pool empty for a second.
        with psycopg.connect(fresh_database[1]) as blocker:
            blocker.execute("LOCK TABLE auth_user IN ACCESS EXCLUSIVE MODE")

            def me():
                return httpx.get(f"{base}/api/auth/v1/me", headers=bearer, timeout=120)

            with ThreadPoolExecutor(12) as pool:
                futures = [pool.submit(me) for _ in range(12)]
                # The refused ones answer after the pool timeout; the two holders cannot.
                done, _ = wait(futures, timeout=90, return_when=FIRST_COMPLETED)
                assert done, "no request answered while the pool was held"
                wait(futures, timeout=10)
                answered_while_held = sum(future.done() for future in futures)
                blocker.rollback()  # release the lock: the holders go through
                responses = [future.result() for future in futures]
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 503}, statuses
        assert 500 not in statuses
        refused = [response for response in responses if response.status_code == 503]
        assert refused, statuses
        for response in refused:
            assert response.json()["code"] == codes.DATABASE_BUSY.code, response.text
            assert response.headers["Retry-After"] == "1"
        # The requests that held the pool's connections went through once the lock was gone.
        assert statuses.count(200) >= 1, statuses
        assert answered_while_held <= 12 - statuses.count(200)
        after = httpx.get(f"{base}/api/auth/v1/me", headers=bearer, timeout=30)
        assert after.status_code == 200, after.text


@pytest.fixture
def limited_database():
    """A database that admits no connection of a non-superuser role (``CONNECTION LIMIT 0``)."""
    suffix = f"{threading.get_native_id()}"
    name, role = f"podi_platform_limit_{suffix}", f"podi_platform_limited_{suffix}"
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'CREATE DATABASE "{name}" CONNECTION LIMIT 0')
    yield admin_url().rsplit("/", 1)[0].replace("postgres@", f"{role}@", 1) + f"/{name}"
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_connection_refused_at_the_limit_reads_as_busy(limited_database):
    """PostgreSQL's refusal at a connection limit (as at max_connections, "too many clients")
    maps to 503 DATABASE_BUSY through Django's error wrapper; an unreachable server does not."""
    with pytest.raises(OperationalError) as refused, connection.wrap_database_errors:
        psycopg.connect(limited_database, connect_timeout=5)
    assert database_busy(refused.value)
    error = to_app_error(refused.value)
    assert (error.code, error.status) == (codes.DATABASE_BUSY.code, 503)

    with pytest.raises(OperationalError) as down, connection.wrap_database_errors:
        psycopg.connect(f"postgres://postgres@127.0.0.1:{free_port()}/x", connect_timeout=5)
    assert not database_busy(down.value)
    assert to_app_error(down.value).code == codes.DATABASE_UNAVAILABLE.code


def _backend(conn) -> int:
    return conn.info.backend_pid


@pytest.mark.parametrize("kind", [WarmestFirstPool, psycopg_pool.ConnectionPool])
def test_the_pool_hands_out_the_connection_returned_last(fresh_database, kind):
    """ADR 0035: the connection returned last is the next one out, so sequential work stays on
    one connection (its statements prepared there); psycopg's own pool takes turns."""
    with kind(fresh_database[1], min_size=3, max_size=3, open=True) as pool:
        pool.wait(timeout=30)
        first, second, third = (pool.getconn() for _ in range(3))
        for conn in (first, second, third):
            pool.putconn(conn)
        served = []
        for _ in range(4):
            conn = pool.getconn()
            served.append(_backend(conn))
            conn.execute("SELECT 1")
            pool.putconn(conn)
        if kind is WarmestFirstPool:
            assert served == [_backend(third)] * 4
            # Two at once: the warmest, then the next warmest; the coldest stays idle.
            a, b = pool.getconn(), pool.getconn()
            assert (_backend(a), _backend(b)) == (_backend(third), _backend(second))
            pool.putconn(b)
            pool.putconn(a)
            assert pool.get_stats()["pool_available"] == 3
        else:
            assert served == [_backend(c) for c in (first, second, third, first)]


def test_sequential_requests_run_on_one_pooled_connection(up_env):
    """A web process serving one request after another does so on one database session: the
    backend that ran the first request's statements runs the last one's too."""
    with web_as_admin(up_env, DATABASE_POOL_MAX="6", DATABASE_POOL_MIN="4") as (base, bearer):
        with psycopg.connect(admin_url(), autocommit=True) as probe:

            def sessions() -> dict[int, int]:
                # Each session's transaction count is not exposed; its last statement's end is.
                rows = probe.execute(
                    "SELECT pid, extract(epoch FROM state_change) FROM pg_stat_activity "
                    "WHERE datname = %s AND backend_type = 'client backend'",
                    [up_env["DATABASE_URL"].rsplit("/", 1)[1]],
                ).fetchall()
                return {pid: at for pid, at in rows}

            before = sessions()
            assert len(before) >= 4, before  # the pool's minimum is open
            for _ in range(12):
                me = httpx.get(f"{base}/api/auth/v1/me", headers=bearer, timeout=30)
                assert me.status_code == 200, me.text
            after = sessions()
    touched = [pid for pid, at in after.items() if at != before.get(pid)]
    assert len(touched) == 1, (before, after)


def test_a_checkout_asks_the_server_only_when_the_server_wrote(fresh_database):
    """ADR 0035: the check at checkout costs no round trip for a healthy idle connection; one
    the server ended while it sat in the pool is replaced, and the caller never sees it."""
    with (
        psycopg.connect(admin_url(), autocommit=True) as admin,
        WarmestFirstPool(
            fresh_database[1], min_size=1, max_size=1, check=check_idle_connection, open=True
        ) as pool,
    ):
        pool.wait(timeout=30)

        def last_change(pid: int):
            row = admin.execute(
                "SELECT state_change FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
            return row[0] if row else None

        with pool.connection() as conn:
            pid = _backend(conn)
        before = last_change(pid)
        for _ in range(3):
            with pool.connection() as conn:
                assert _backend(conn) == pid
        assert last_change(pid) == before  # nothing was sent to the server

        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while last_change(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pool.connection() as conn:
            assert _backend(conn) != pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pool.get_stats().get("connections_lost", 0) >= 1
