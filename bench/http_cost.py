#!/usr/bin/env python
"""HTTP cost bench (issue #13, ADR 0020): CPU and wall per request of ONE web process, by route.

``manage.py up --role web`` (one Daphne process, ``WEB_CONCURRENCY=1``) on PostgreSQL + Redis, a
throwaway database and Redis prefix; one client sends ``--requests`` requests per route, one
after another, after 20 to warm up. CPU is the web process's utime+stime from ``/proc`` before
and after the route's requests (not wall clock, so noise from other work does not blur it);
wall is the client's. Routes: a 404 (the framework's floor), ``GET /health``, a wallet balance,
a task's detail, and a submit (its executor is never contacted: the bench measures the web
tier, not the run).

    .venv/bin/python bench/http_cost.py [--requests 300] [--tag NAME]
        [--admin-url postgres://postgres@127.0.0.1:5432/postgres] [--redis-url redis://…]

JSON goes to ``bench/results/http_cost[-tag]-<timestamp>.json``; a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from broker_latency import cpu_seconds
from tasks_bench import (
    INVERT_GRAPH,
    INVERT_SCHEMA,
    admin_execute,
    default_admin_url,
    free_port,
    with_database,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def web_pid(parent: int) -> int:
    """The Daphne process: ``manage.py up --role web`` serves in-process, or in one child."""
    children = subprocess.run(
        ["pgrep", "-P", str(parent)], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(children[0]) if children else parent


def fixtures() -> dict:
    """A user with credits and a token, an ability on an executor that is never called, a task."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework_simplejwt.tokens import AccessToken

    from integrations.models import Ability, Executor, Workflow, WorkflowBinding
    from integrations.services import workflow_version_create
    from tasks.services import task_submit
    from wallet.services import wallet_grant

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user(username="http-cost", password=secrets.token_hex())
    wallet_grant(user=user, points=10**9, reason="bench", reference="http-cost")
    # Port 9 (discard): the web tier never calls it; no worker runs in this bench.
    executor = Executor.objects.create(
        name="never-called", kind="comfyui", base_url="http://127.0.0.1:9", max_concurrency=10**6
    )
    workflow = Workflow.objects.create(name="wf-http-cost", kind="comfyui")
    workflow_version_create(
        workflow=workflow, definition=INVERT_GRAPH, params_schema=INVERT_SCHEMA, activate=True
    )
    ability = Ability.objects.create(code="http-cost", display_name="HTTP cost", points=1)
    WorkflowBinding.objects.create(ability=ability, workflow=workflow, executor=executor)
    task = task_submit(user=user, action=ability.code, params={"width": 64, "height": 64})
    return {
        "token": str(AccessToken.for_user(user)),
        "task": task.public_id,
        "action": ability.code,
    }


def measure(client: httpx.Client, pid: int, call, count: int) -> dict:
    for _ in range(20):
        call()
    cpu_before, began = cpu_seconds(pid), time.perf_counter()
    statuses = set()
    for _ in range(count):
        statuses.add(call().status_code)
    wall, cpu = time.perf_counter() - began, cpu_seconds(pid) - cpu_before
    return {
        "status": sorted(statuses),
        "cpuMsPerRequest": round(1000 * cpu / count, 2),
        "wallMsPerRequest": round(1000 * wall / count, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tag", default="")
    parser.add_argument("--admin-url", default=default_admin_url())
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    args = parser.parse_args()

    name = f"podi_bench_http_{os.getpid()}_{secrets.token_hex(3)}"
    admin_execute(args.admin_url, f'CREATE DATABASE "{name}"')
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    env = {
        **os.environ,
        "DATABASE_URL": with_database(args.admin_url, name),
        "REDIS_URL": args.redis_url,
        "REDIS_PREFIX": name,
        "PODI_DATA_DIR": str(data_dir),
        "WEB_CONCURRENCY": "1",
        "RATE_LIMIT": "1000000/min",
    }
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "podi.settings")
    sys.path.insert(0, str(ROOT))
    web = None
    try:
        import django

        django.setup()
        made = fixtures()
        port = free_port()
        web = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--role", "web", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {made['token']}"},
            timeout=30,
        )
        for _ in range(300):
            try:
                client.get("/health")
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        pid = web_pid(web.pid)
        submit = {"action": made["action"], "params": {"width": 64, "height": 64}}
        routes = {
            "GET /nope (404)": lambda: client.get("/nope"),
            "GET /health": lambda: client.get("/health"),
            "GET /api/wallet/v1/balance": lambda: client.get("/api/wallet/v1/balance"),
            "GET /api/tasks/v1/{id}": lambda: client.get(f"/api/tasks/v1/{made['task']}"),
            "POST /api/tasks/v1/submit": lambda: client.post("/api/tasks/v1/submit", json=submit),
        }
        figures = {}
        print(f"http cost: one web process, {args.requests} sequential requests per route")
        print(f"  {'route':<28} {'status':>8} {'CPU ms':>8} {'wall ms':>8}")
        for route, call in routes.items():
            figures[route] = measure(client, pid, call, args.requests)
            row = figures[route]
            print(
                f"  {route:<28} {','.join(map(str, row['status'])):>8} "
                f"{row['cpuMsPerRequest']:>8} {row['wallMsPerRequest']:>8}"
            )
    finally:
        if web is not None:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(15)
        from django.db import connections

        connections.close_all()
        admin_execute(args.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(data_dir, ignore_errors=True)
    result = {
        "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "config": {"requests": args.requests, "webProcesses": 1, "tag": args.tag},
        "routes": figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"http_cost{'-' + args.tag if args.tag else ''}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
