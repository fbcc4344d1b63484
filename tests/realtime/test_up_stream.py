"""``manage.py up`` (web + worker + reconciler in one process) serves the live stream."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psycopg
import pytest
from websockets.asyncio.client import connect

from tests.realtime.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def up_env(tmp_path):
    env = {
        **os.environ,
        "PODI_DATA_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "warning",
    }
    env.pop("PODI_ADMIN_PASSWORD", None)
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        yield env
        return

    name = f"podi_up_stream_{os.getpid()}_{int(time.time())}"
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env["DATABASE_URL"] = database_url.rsplit("/", 1)[0] + f"/{name}"
    env["REDIS_PREFIX"] = f"podi-up-stream-{os.getpid()}"
    yield env
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_up_serves_the_stream_and_pushed_events_reach_it(up_env):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--port", str(port)],
        cwd=ROOT,
        env=up_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            output.append(line)
            if "PODI is up" in line or process.poll() is not None:
                break
        text = "".join(output)
        assert "PODI is up" in text, text
        password = re.search(r"with password: (\S+)", text).group(1)
        base = f"http://127.0.0.1:{port}"
        login = httpx.post(
            f"{base}/api/auth/v1/login", json={"username": "admin", "password": password}
        )
        assert login.status_code == 200, login.text
        token = login.json()["accessToken"]

        async def main():
            ws = await connect(
                f"ws://127.0.0.1:{port}/api/notify/v1/stream", subprotocols=[f"bearer.{token}"]
            )
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (hello["type"], hello["lastSeq"]) == ("hello", 0)
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                pushed = await http.post(
                    "/api/notify/v1/event",
                    json={"type": "system.notice", "payload": {"text": "hello"}},
                    headers={"Authorization": f"Bearer {token}"},
                )
            assert pushed.status_code == 201, pushed.text
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert event == {
                "id": pushed.json()["id"],
                "seq": 1,
                "type": "system.notice",
                "payload": {"text": "hello"},
                "timestamp": pushed.json()["timestamp"],
            }
            refused = await connect(f"ws://127.0.0.1:{port}/api/notify/v1/stream?token=nope")
            with pytest.raises(Exception) as closed:
                await asyncio.wait_for(refused.recv(), 10)
            assert closed.value.rcvd.code == 4401
            await ws.close()

        asyncio.run(main())
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=20)
        assert process.returncode == 0, rest
    finally:
        if process.poll() is None:
            process.kill()
            print("".join(output) + process.communicate()[0])  # shown when the test fails
