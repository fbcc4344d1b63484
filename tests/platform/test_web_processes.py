"""``manage.py up`` with WEB_CONCURRENCY=2: two Daphne processes answer on one port, beside a
worker and a reconciler, and they all stop together."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import pytest

from tests.platform.conftest import free_port, read_until, start_up, stop

# Four Django processes start on a machine that may be busy.
pytestmark = pytest.mark.timeout(400)


def children(text: str) -> dict[str, int]:
    return {
        name: int(pid) for name, pid in re.findall(r"Started (\w+(?: \d)?) \(pid (\d+)\)", text)
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not alive either.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    return [pid for pid in pids if alive(pid)]


def test_two_web_processes_share_the_port_and_stop_together(up_env):
    port = free_port()
    up_env["WEB_CONCURRENCY"] = "2"
    process = start_up(["--port", str(port)], up_env)
    try:
        text = read_until(process, "PODI is up")
        assert "PODI is up" in text, text
        assert "Starting 2 web processes" in text, text
        started = children(text)
        assert set(started) == {"web 1", "web 2", "worker", "reconciler"}, text
        web_pids = {started["web 1"], started["web 2"]}

        # Each request on a new connection: the kernel hands it to either process.
        seen: set[int] = set()
        for _ in range(300):
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
            assert response.status_code == 200, response.text
            seen.add(response.json()["pid"])
            if seen == web_pids:
                break
        assert seen == web_pids

        # The web processes serve the API (database, Redis) like one.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            login = http.post(
                "/api/auth/v1/login",
                json={"username": "admin", "password": "platform test passphrase"},
            )
            assert login.status_code == 200, login.text

        process.send_signal(signal.SIGTERM)
        rest = stop(process)
        assert process.returncode == 0, text + rest
        assert "Stopping" in rest and "Stopped after" in rest, rest
        assert wait_gone(started.values()) == []
    finally:
        stop(process)


def test_a_child_that_dies_stops_the_others(up_env):
    up_env["WEB_CONCURRENCY"] = "2"
    process = start_up(["--port", str(free_port()), "--no-reconciler"], up_env)
    try:
        text = read_until(process, "PODI is up")
        started = children(text)
        assert set(started) == {"web 1", "web 2", "worker"}, text
        os.kill(started["web 2"], signal.SIGKILL)
        rest, _ = process.communicate(timeout=120)  # the supervisor stops by itself
        assert process.returncode not in (0, None), text + rest
        assert "web 2" in rest and "exited with -9; stopping all" in rest, rest
        assert wait_gone(started.values()) == []
    finally:
        stop(process)


def test_children_stop_when_the_supervisor_is_killed(up_env):
    up_env["WEB_CONCURRENCY"] = "2"
    process = start_up(["--role", "web", "--migrate", "--port", str(free_port())], up_env)
    try:
        text = read_until(process, "PODI is up")
        started = children(text)
        assert set(started) == {"web 1", "web 2"}, text
        process.kill()
        process.wait()
        assert wait_gone(started.values()) == []
    finally:
        stop(process)
