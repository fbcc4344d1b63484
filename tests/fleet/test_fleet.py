"""Several hosts, one fleet: PODI across network namespaces behind nginx, with faults injected.

See tests/fleet/hosts.py for the hosts. Each test below injects one fault while load runs and
then checks the same guarantees (``assert_fleet_consistent``): every task terminal exactly once
(one terminal event, hold confirmed iff succeeded), wallet invariants, every webhook delivered at
least once under its one ``webhook-id`` with a valid signature, and each user's WebSocket replay
has no gap and no duplicate. The tests run in file order on one fleet.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]


def wait_terminal(fleet, load, timeout: float = 180) -> dict:
    task_file = Path(fleet.dir) / "task_ids.txt"
    task_file.write_text("\n".join(load.task_ids) + "\n")
    deadline = time.monotonic() + timeout
    while True:
        report = fleet.probe("check", str(task_file))
        if not report["notTerminal"] and not report["missing"]:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(
                f"tasks not terminal after {timeout} s: {report['notTerminal'][:20]} "
                f"statuses {report['statuses']}"
            )
        time.sleep(2)


def assert_fleet_consistent(fleet, load, *, all_succeed: bool = True, timeout: float = 180):
    report = wait_terminal(fleet, load, timeout)
    assert report["terminalEventsNot1"] == {}, report["terminalEventsNot1"]
    assert report["holdMismatch"] == [], report["holdMismatch"]
    assert set(report["invariants"].values()) == {"ok"}, report["invariants"]
    if all_succeed:
        assert report["failed"] == [], report["failed"]
    # Webhooks: one delivery per terminal task, delivered, its id received with a valid signature.
    deadline = time.monotonic() + 60
    while True:
        received = {}
        if fleet.hook_log.exists():
            for line in fleet.hook_log.read_text().splitlines():
                item = json.loads(line)
                received.setdefault(item["id"], []).append(item["verified"])
        deliveries = report["deliveries"]
        by_task = {}
        for delivery in deliveries:
            by_task.setdefault(delivery["task__public_id"], []).append(delivery)
        undelivered = [
            d for d in deliveries if d["status"] != "succeeded" or d["public_id"] not in received
        ]
        if not undelivered or time.monotonic() > deadline:
            break
        time.sleep(2)
        report = fleet.probe("check", str(Path(fleet.dir) / "task_ids.txt"))
    assert undelivered == [], undelivered[:10]
    assert sorted(by_task) == sorted(load.task_ids), "a task without its webhook delivery"
    assert all(len(v) == 1 for v in by_task.values()), "a task with two terminal deliveries"
    assert all(all(received[d["public_id"]]) for d in deliveries), "a bad webhook signature"
    # WebSocket: every user's stream has no gap and no duplicate, and saw each terminal event once.
    deadline = time.monotonic() + 30
    mine = set(load.task_ids)
    while True:
        seen = {}
        for name in load.subscribers:
            seen.update(load.terminal_seen(name))
        if mine <= set(seen) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for name, sub in load.subscribers.items():
        assert sub.gaps == [], f"{name}: gaps {sub.gaps}"
        assert sub.duplicates == 0, f"{name}: {sub.duplicates} duplicates"
        assert sub.seqs == list(range(1, len(sub.seqs) + 1)), f"{name}: seqs not 1..N"
    assert sorted(mine - set(seen)) == [], "terminal events the streams never delivered"
    assert {seen[t] for t in mine} == {1}
    return report


def test_smoke_a_few_tasks_through_nginx(fleet, load):
    ids = load.submit(3, seconds=0.2)
    assert len(ids) == 12
    report = assert_fleet_consistent(fleet, load)
    assert report["statuses"] == {"succeeded": 12}
    # nginx serves the collected static files itself.
    import httpx

    css = httpx.get(
        f"{fleet.lb_url}/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
        verify=fleet.tls,
    )
    assert css.status_code == 200
    assert "nginx" in css.headers.get("server", "")


def worker_of(fleet, host: str) -> str:
    """The pid part of the worker ids of ``host``'s worker process."""
    return f":{fleet.hosts[host].procs[0].popen.pid}:"


def test_worker_host_killed_its_tasks_resume_on_the_other_within_15s(fleet, load):
    """Fault 1: kill -9 a worker host mid-run; its running attempts are resumed by the other
    worker within 15 s (its liveness lease lapses; no 60 s stale-heartbeat wait), each ends once."""
    pending = load.submit_in_background(25, seconds=0.6, spread=6)
    dead = worker_of(fleet, "worker1")
    deadline = time.monotonic() + 60
    while True:
        held = {t for t, row in fleet.probe("running").items() if dead in (row["worker"] or "")}
        if len(held) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert held, "worker1 never ran a task"
    fleet.kill("worker1")
    killed_at = time.monotonic()
    waits = {}
    while len(waits) < len(held) and time.monotonic() - killed_at < 40:
        rows = fleet.probe("running")
        for task_id in held - set(waits):
            row = rows.get(task_id)
            if row is None or dead not in (row["worker"] or ""):
                waits[task_id] = time.monotonic() - killed_at
        time.sleep(0.5)
    fleet.start_worker("worker1")
    pending.result(timeout=240)
    assert sorted(waits) == sorted(held), f"not resumed in 40 s: {sorted(held - set(waits))}"
    assert max(waits.values()) < 15, waits
    assert_fleet_consistent(fleet, load)
