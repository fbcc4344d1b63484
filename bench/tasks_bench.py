#!/usr/bin/env python
"""Tasks benchmark (README "Benchmarks: tasks"): submit throughput and latency, dispatch overhead, idle memory.

Everything runs on PostgreSQL + Redis against the whole platform started as a real subprocess
(``manage.py up``: its web processes, the worker and the reconciler; ``--split`` runs ``daphne`` +
``manage.py rundramatiq`` + ``manage.py reconcile --loop`` instead), with a protocol-faithful
ComfyUI test server (``tests/servers/comfyui.py``, ``node_delay=0``) in this process:

1. reference — ``pgbench -i -s 1`` then TPC-B with ``--clients`` clients, 2 threads, on its own
   database → tps;
2. submit throughput — ``--clients`` concurrent httpx clients POST ``/api/tasks/v1/submit`` for
   ``--seconds`` (bearer JWT of a funded user) → tasks/s, p50/p99; target ≥ 15 % of TPC-B tps;
3. paced submit latency — ``--rate`` requests/s for ``--paced-seconds``, open loop (latency
   counted from each request's scheduled time) → p50/p99; target p99 ≤ 50 ms;
   (phases 2 and 3 use an ability bound to a parked, unhealthy executor, so the figures are
   submit + its dispatch doorbell, not execution; the tasks are then canceled over HTTP);
4. overhead — ``--jobs`` model-free jobs (EmptyImage → ImageInvert → SaveImage) posted straight
   to the ComfyUI test server (``POST /prompt`` with ``client_id``, wait for every ``/history``
   entry) vs the same jobs submitted through PODI until every task row is terminal (the WebSocket
   stream is followed too and its deliveries counted); wall-time ratio, target ≤ 1.10×;
5. memory — RSS of the web process idle (target ≤ 150 MB); with ``up`` that process also runs the
   worker, so a plain ``daphne podi.asgi:application`` process is measured idle as well.

At the end the wallet invariants (docs/adr/0003-wallet.md) are checked for every bench user, and every
submitted task must have reached exactly one terminal state (one terminal ``task.status`` event,
hold confirmed iff succeeded). The script creates its own databases and Redis prefix and removes
them at the end, also on Ctrl-C or failure; it prints the figures side by side and writes them as
JSON to ``bench/results/``.

    .venv/bin/python bench/tasks_bench.py [--seconds 10] [--clients 16] [--jobs 100]
        [--admin-url postgres://postgres@127.0.0.1:5432/postgres] [--users 1] [--rate 100]
        [--paced-seconds 10] [--max-concurrency 8] [--worker-threads 8] [--node-delay 0]
        [--split] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from steady import no_collector_pauses

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
TARGETS = {"submitShare": 0.15, "pacedP99Ms": 50.0, "overheadRatio": 1.10, "idleRssMb": 150.0}
PASSWORD = "bench-" + secrets.token_urlsafe(12)

# The model-free graph of tests/tasks/conftest.py (EmptyImage → ImageInvert → SaveImage).
INVERT_GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {
            "width": "{{width}}",
            "height": "{{height}}",
            "batch_size": 1,
            "color": "{{color}}",
        },
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
}
INVERT_SCHEMA = {
    "type": "object",
    "properties": {
        "width": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 64},
        "height": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 48},
        "color": {"type": "integer", "minimum": 0, "maximum": 16777215, "default": 16711680},
    },
    "additionalProperties": False,
}
JOB_PARAMS = {"width": 64, "height": 48, "color": 16711680}
SUBMIT_ACTION = "bench-submit"  # bound to a parked executor: tasks stay queued
RUN_ACTION = "bench-invert"  # bound to the ComfyUI test server
TERMINAL = ("succeeded", "failed", "canceled")


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. A BaseException, so no library's ``except Exception`` swallows it (and
    our own handler, not asyncio's, so an in-flight request cannot absorb the cancellation)."""


def _on_signal(signum, frame):  # noqa: ARG001
    raise Interrupted(signal.Signals(signum).name)


# --- small helpers --------------------------------------------------------------------------


def default_admin_url() -> str:
    url = os.environ.get("BENCH_PG_ADMIN_URL") or os.environ.get("DATABASE_URL") or ""
    if not url.startswith(("postgres://", "postgresql://")):
        return "postgres://postgres@127.0.0.1:5432/postgres"
    return urlunsplit(urlsplit(url)._replace(path="/postgres", query=""))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin_execute(admin_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of seconds, in ms."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)


def latency_summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {
        "p50": pct(values, 0.50),
        "p90": pct(values, 0.90),
        "p99": pct(values, 0.99),
        "max": round(max(values) * 1000, 2),
        "mean": round(statistics.fmean(values) * 1000, 2),
    }


def rss_mb(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rssMb": fields.get("VmRSS"), "peakRssMb": fields.get("VmHWM")}


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (rundramatiq forks its workers)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            total += rss_mb(current)["rssMb"] or 0
            for child in Path(f"/proc/{current}/task").glob("*/children"):
                pending.extend(int(c) for c in child.read_text().split())
    return round(total, 1)


# --- processes ------------------------------------------------------------------------------


class Processes:
    """Subprocesses this bench started; each in its own session, stopped by its own id."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches only us; we stop them in order
        )
        proc.log = log  # type: ignore[attr-defined]
        self.started.append((name, proc))
        return proc

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def error_summary(self, name: str) -> dict[str, int]:
        """Server errors logged by a process, by exception (the last line of each traceback)."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return {}
        found: dict[str, int] = {}
        for line in path.read_text(errors="replace").splitlines():
            if '"level": "error"' not in line and '"level": "critical"' not in line:
                continue
            causes = re.findall(
                r"\\n([A-Za-z_][\w.]*(?:Error|Exception|Deadlock\w*)): ([^\\]*)", line
            )
            source = re.search(r'"logger": "([^"]*)"', line)
            source = source.group(1) if source else "?"
            if causes:
                kind, text = causes[-1]
                key = f"[{source}] {kind}: {text[:90]}"
            else:
                match = re.search(r'"message": "([^"]{0,100})', line)
                key = f"[{source}] " + (match.group(1) if match else line[:100])
            found[key] = found.get(key, 0) + 1
        return found

    def stop(self, proc: subprocess.Popen, timeout: float = 20) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # its own group: it and its forks only
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # rundramatiq's forked workers share the group; make sure none outlives its parent
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.log.close()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            self.stop(proc)
        self.started.clear()


def wait_http(proc: subprocess.Popen, base: str, name: str, procs: Processes, timeout=90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{procs.tail(name)}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer /health within {timeout} s:\n{procs.tail(name)}")


def start_platform(args, env: dict, procs: Processes) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**env, "PUBLIC_BASE_URL": base}
    if args.split:
        daphne = str(Path(PYTHON).parent / "daphne")
        web = procs.start(
            "web", [daphne, "-b", "127.0.0.1", "-p", str(port), "podi.asgi:application"], env
        )
        worker = procs.start(
            "worker",
            [PYTHON, "manage.py", "rundramatiq", "--processes", "1", "--threads",
             str(args.worker_threads)],
            env,
        )  # fmt: skip
        procs.start("reconciler", [PYTHON, "manage.py", "reconcile", "--loop"], env)
        mode = (
            f"split: daphne podi.asgi:application + manage.py rundramatiq --processes 1 "
            f"--threads {args.worker_threads} + manage.py reconcile --loop"
        )
    else:
        web = procs.start(
            "web", [PYTHON, "manage.py", "up", "--host", "127.0.0.1", "--port", str(port)], env
        )
        worker = web
        mode = (
            f"manage.py up (its web processes, WEB_CONCURRENCY or one per core with Redis, the "
            f"Dramatiq worker with WORKER_THREADS={args.worker_threads} and the reconciler)"
        )
    wait_http(web, base, "web", procs)
    return {"base": base, "port": port, "web": web, "worker": worker, "mode": mode}


# --- phase 1: TPC-B reference ---------------------------------------------------------------


def reference_tpcb(url: str, clients: int, seconds: int) -> dict:
    subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", url],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = subprocess.run(
        ["pgbench", "-c", str(clients), "-j", "2", "-T", str(seconds), url],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    ).stdout
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    return {
        "tool": f"pgbench TPC-B -s 1 -c {clients} -j 2 -T {seconds}",
        "tps": float(tps.group(1)),
        "latencyAvgMs": float(latency.group(1)) if latency else None,
    }


# --- fixtures in the bench database ---------------------------------------------------------


def setup_fixtures(args, comfy_url: str) -> dict:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from integrations.models import Ability, Executor, HealthStatus, Workflow, WorkflowBinding
    from integrations.services import workflow_version_create
    from wallet.services import wallet_grant

    now = timezone.now()
    parked = Executor.objects.create(
        name="bench-parked",
        kind="comfyui",
        base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: stays unhealthy
        max_concurrency=1,
        health_status=HealthStatus.UNHEALTHY,
        health_checked_at=now,
        health_error="parked by the bench: tasks stay queued",
    )
    comfy = Executor.objects.create(
        name="bench-comfyui",
        kind="comfyui",
        base_url=comfy_url,
        max_concurrency=args.max_concurrency,
        health_status=HealthStatus.HEALTHY,
        health_checked_at=now,
    )
    workflow = Workflow.objects.create(name="bench-invert", kind="comfyui")
    workflow_version_create(
        workflow=workflow, definition=INVERT_GRAPH, params_schema=INVERT_SCHEMA, activate=True
    )
    for code, executor in ((SUBMIT_ACTION, parked), (RUN_ACTION, comfy)):
        ability = Ability.objects.create(code=code, display_name=code, points=1)
        WorkflowBinding.objects.create(
            ability=ability,
            workflow=workflow,
            executor=executor,  # maxAttempts: the default (3)
            queue_timeout=3600,
            run_timeout=600,
        )
    User = get_user_model()
    users = {}
    names = [f"bench-submit-{i}" for i in range(args.users)] + ["bench-run"]
    for name in names:
        user = User.objects.create_user(name, password=PASSWORD)
        wallet_grant(user=user, points=10**9, reason="bench", reference=f"bench-{name}")
        users[name] = user
    return users


def login(base: str, username: str) -> str:
    import httpx

    response = httpx.post(
        f"{base}/api/auth/v1/login", json={"username": username, "password": PASSWORD}, timeout=30
    )
    if response.status_code != 200:
        raise RuntimeError(f"login {username}: {response.status_code} {response.text[:300]}")
    return response.json()["accessToken"]


# --- phases 2 and 3: submit over HTTP -------------------------------------------------------


def submit_body(tag: str) -> dict:
    return {"action": SUBMIT_ACTION, "params": {"width": 8, "height": 8}, "clientRef": tag}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def error_key(response) -> str:
    """``status CODE: message`` of a refused request (request ids left out, so errors group)."""
    try:
        body = response.json()
        return f"{response.status_code} {body.get('code')}: {str(body.get('message'))[:80]}"
    except ValueError:
        return f"{response.status_code} {response.text[:80]}"


def count(errors: dict[str, int], key: str) -> None:
    errors[key] = errors.get(key, 0) + 1


async def _throughput(base: str, tokens: list[str], clients: int, seconds: int) -> dict:
    """``clients`` closed-loop clients; client i submits as user ``i % len(tokens)``."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:

        async def submit(index: int, tag: str):
            headers = bearer(tokens[index % len(tokens)])
            return await http.post("/api/tasks/v1/submit", json=submit_body(tag), headers=headers)

        warm = await asyncio.gather(*(submit(i, f"w{i}") for i in range(clients)))
        warm_accepted = sum(r.status_code == 202 for r in warm)
        for response in warm:
            if response.status_code != 202:
                count(errors, "warm-up " + error_key(response))

        async def client(index: int, deadline: float) -> tuple[int, list[float]]:
            latencies, accepted = [], 0
            while time.monotonic() < deadline:
                began = time.perf_counter()
                response = await submit(index, f"t{index}-{len(latencies)}")
                latencies.append(time.perf_counter() - began)
                if response.status_code == 202:
                    accepted += 1
                else:
                    count(errors, error_key(response))
            return accepted, latencies

        began = time.monotonic()
        outputs = await asyncio.gather(*(client(i, began + seconds) for i in range(clients)))
        elapsed = time.monotonic() - began
    accepted = sum(o[0] for o in outputs)
    latencies = [x for o in outputs for x in o[1]]
    return {
        "clients": f"{clients} httpx connections (asyncio, one bench process)",
        "users": len(tokens),
        "accepted": accepted + warm_accepted,  # + the warm-up submits
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "tasksPerSecond": round(accepted / elapsed, 1),
        "latencyMs": latency_summary(latencies),
    }


async def _paced(base: str, tokens: list[str], rate: float, seconds: int) -> dict:
    """Open loop: request i is sent at ``start + i / rate`` whatever the earlier ones do.

    Latency counts from the scheduled time (no coordinated omission). When the server falls
    more than 2 s of requests behind, sending stops: the rate is not sustainable, and going on
    would only pile up queued tasks (``saturated`` says so)."""
    import httpx

    total = int(rate * seconds)
    backlog_cap = max(int(2 * rate), 32)
    in_flight = [0]
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    from_schedule: list[float] = []
    from_send: list[float] = []
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        # open a few keep-alive connections first, so the first requests do not pay for TCP
        await asyncio.gather(*(http.get("/health") for _ in range(8)))

        async def one(index: int, scheduled: float) -> None:
            sent = time.perf_counter()
            in_flight[0] += 1
            try:
                response = await http.post(
                    "/api/tasks/v1/submit",
                    json=submit_body(f"p{index}"),
                    headers=bearer(tokens[index % len(tokens)]),
                )
            finally:
                in_flight[0] -= 1
            done = time.perf_counter()
            from_schedule.append(done - scheduled)
            from_send.append(done - sent)
            if response.status_code != 202:
                count(errors, error_key(response))

        start = time.perf_counter() + 0.05
        pending = []
        saturated = False
        for index in range(total):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight[0] >= backlog_cap:
                saturated = True
                break
            pending.append(asyncio.create_task(one(index, scheduled)))
        sent_for = time.perf_counter() - start
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "planned": total,
        "requests": len(pending),
        "saturated": saturated,
        "sendingSeconds": round(sent_for, 2),
        "accepted": len(pending) - sum(errors.values()),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "completedPerSecond": round(len(pending) / elapsed, 1),
        "latencyMs": latency_summary(from_schedule),
        "latencyFromSendMs": latency_summary(from_send),
    }


async def _cancel_all(base: str, work: list[tuple[str, str]], clients: int) -> dict:
    """Cancel every ``(token, taskId)`` over HTTP with ``clients`` concurrent clients."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    queue = list(work)
    errors: dict[str, int] = {}
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:

        async def client() -> None:
            while queue:
                token, task_id = queue.pop()
                began = time.perf_counter()
                response = await http.post(f"/api/tasks/v1/{task_id}/cancel", headers=bearer(token))
                latencies.append(time.perf_counter() - began)
                if response.status_code != 200:
                    count(errors, error_key(response))

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - began
    return {
        "canceled": len(work) - sum(errors.values()),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "cancelsPerSecond": round(len(work) / elapsed, 1) if elapsed else None,
        "latencyMs": latency_summary(latencies),
    }


def cancel_parked(base: str, tokens: dict[int, str], clients: int) -> dict:
    """Cancel every parked task over HTTP, each by its owner (``tokens``: user id → JWT)."""
    from tasks.models import Task

    queued = Task.objects.filter(action=SUBMIT_ACTION, status="queued")
    work = [
        (tokens[user_id], task_id)
        for user_id, task_id in queued.values_list("user_id", "public_id")
    ]
    result = asyncio.run(_cancel_all(base, work, clients))
    left = queued.count()
    if left:
        raise RuntimeError(f"{left} parked tasks still queued after the cancel pass")
    return result


# --- phase 4: overhead, direct vs through PODI ----------------------------------------------


def direct_run(comfy_url: str, jobs: int, tag: str) -> dict:
    """POST every job to ComfyUI (one client, as fast as it answers), then wait for history."""
    import httpx

    client_id = f"bench-direct-{uuid.uuid4().hex}"
    ids: list[str] = []
    with httpx.Client(base_url=comfy_url, timeout=30) as http:
        began = time.perf_counter()
        for index in range(jobs):
            graph = copy.deepcopy(INVERT_GRAPH)
            graph["1"]["inputs"].update(JOB_PARAMS)
            # unique per job, as PODI makes it unique per attempt (identical graphs are cached)
            graph["3"]["inputs"]["filename_prefix"] = f"direct/{tag}-{index}/inv"
            prompt_id = str(uuid.uuid4())
            response = http.post(
                "/api/prompt",
                json={"prompt": graph, "client_id": client_id, "prompt_id": prompt_id},
            )
            if response.status_code != 200 or response.json().get("node_errors"):
                raise RuntimeError(f"direct /prompt: {response.status_code} {response.text[:300]}")
            ids.append(prompt_id)
        posted = time.perf_counter() - began
        failed = 0
        for prompt_id in ids:  # FIFO on the server: wait for each in order
            while True:
                entry = http.get(f"/api/history/{prompt_id}").json().get(prompt_id)
                if entry:
                    failed += entry.get("status", {}).get("status_str") != "success"
                    break
                time.sleep(0.002)
        wall = time.perf_counter() - began
    return {"jobs": jobs, "wallSeconds": round(wall, 3), "postSeconds": round(posted, 3),
            "failed": failed}  # fmt: skip


async def _podi_run(base: str, token: str, db_url: str, jobs: int, timeout: float) -> dict:
    """Submit ``jobs`` through PODI (one client, one after the other, like the direct run) and
    wait until every task is terminal.

    Completion is read from the database (the task rows' ``finished_at``; polled every 20 ms on a
    plain psycopg connection, so the web process does no extra work). The WebSocket stream is
    followed as well, and how many terminal events it delivered is reported: a missing one is a
    realtime bug, but it must not stall the measurement."""
    import httpx
    import psycopg
    from websockets.asyncio.client import connect

    ws_url = base.replace("http", "ws", 1) + f"/api/notify/v1/stream?token={token}"
    on_stream: dict[str, float] = {}
    errors: dict[str, int] = {}
    rows: list = []
    ids: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as db:
        async with connect(ws_url, max_size=None, open_timeout=10) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if hello.get("type") != "hello":
                raise RuntimeError(f"stream: {hello}")

            async def listen() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    payload = message.get("payload") or {}
                    if message.get("type") == "task.status" and payload.get("status") in TERMINAL:
                        on_stream.setdefault(payload["taskId"], time.perf_counter())

            listener = asyncio.create_task(listen())
            try:
                async with httpx.AsyncClient(
                    base_url=base, headers=bearer(token), timeout=30
                ) as http:
                    started_at = datetime.now(UTC)
                    began = time.perf_counter()
                    for index in range(jobs):
                        body = {
                            "action": RUN_ACTION,
                            "params": JOB_PARAMS,
                            "clientRef": f"o{index}",
                        }
                        for _ in range(3):  # a 5xx rolled the submit back: send it again
                            response = await http.post("/api/tasks/v1/submit", json=body)
                            if response.status_code < 500:
                                break
                            count(errors, error_key(response))
                        if response.status_code != 202:
                            raise RuntimeError(
                                f"submit: {response.status_code} {response.text[:300]}"
                            )
                        ids.append(response.json()["taskId"])
                    posted = time.perf_counter() - began
                    deadline = time.monotonic() + timeout
                    while time.monotonic() < deadline:
                        rows = db.execute(
                            "SELECT public_id, status, finished_at FROM tasks_task "
                            "WHERE public_id = ANY(%s) AND status = ANY(%s)",
                            (ids, list(TERMINAL)),
                        ).fetchall()
                        if len(rows) == len(ids):
                            break
                        await asyncio.sleep(0.02)
                    await asyncio.sleep(0.5)  # let the last events reach the stream
            finally:
                listener.cancel()
                with contextlib.suppress(BaseException):
                    await listener
    statuses = {s: sum(1 for r in rows if r[1] == s) for s in TERMINAL}
    last = max((r[2] for r in rows), default=started_at)
    return {
        "jobs": jobs,
        "ids": ids,
        "wallSeconds": round((last - started_at).total_seconds(), 3),
        "postSeconds": round(posted, 3),
        "statuses": statuses,
        "unfinished": jobs - len(rows),
        "terminalEventsOnStream": sum(1 for i in ids if i in on_stream),
        "seen": [r[0] for r in rows],
        "submitErrorsRetried": errors,
    }


def unfinished_rows(run: dict) -> list[dict]:
    """The database's view of tasks that did not finish in time."""
    from tasks.models import Task

    missing = set(run["ids"]) - set(run["seen"])
    return list(
        Task.objects.filter(public_id__in=missing).values(
            "public_id", "status", "attempts", "error_code", "progress", "heartbeat_at"
        )
    )


def task_timings(ids: list[str]) -> dict:
    """Where a PODI task's time went, from the task rows (mean and p99 ms)."""
    from tasks.models import Task

    rows = list(
        Task.objects.filter(public_id__in=ids).values("created_at", "dispatched_at", "finished_at")
    )
    waits = [(r["dispatched_at"] - r["created_at"]).total_seconds() for r in rows]
    runs = [(r["finished_at"] - r["dispatched_at"]).total_seconds() for r in rows]
    spans = [(r["finished_at"] - r["created_at"]).total_seconds() for r in rows]
    first = min(r["created_at"] for r in rows)
    last = max(r["finished_at"] for r in rows)
    return {
        "submitToDispatchMs": latency_summary(waits),
        "dispatchToFinishMs": latency_summary(runs),
        "submitToFinishMs": latency_summary(spans),
        "firstSubmitToLastFinishSeconds": round((last - first).total_seconds(), 3),
    }


def phase_overhead(args, comfy, base: str, token: str, db_url: str) -> dict:
    warm_direct = direct_run(comfy.url, 3, "warm")
    warm_podi = asyncio.run(_podi_run(base, token, db_url, 3, 90))
    if warm_podi["unfinished"] or warm_podi["statuses"]["succeeded"] != 3:
        rows = unfinished_rows(warm_podi)
        raise RuntimeError(f"warm-up through PODI did not succeed: {warm_podi} {rows}")
    del warm_direct
    with no_collector_pauses():
        direct = direct_run(comfy.url, args.jobs, "timed")
    comfy.wait_idle()
    with no_collector_pauses():
        podi = asyncio.run(_podi_run(base, token, db_url, args.jobs, 90 + args.jobs))
    podi["unfinishedTasks"] = unfinished_rows(podi)
    podi["timings"] = task_timings(podi.pop("ids"))
    podi.pop("seen")
    # the ratio is wall time until every job ended; the target also needs every job to succeed
    ok = podi["unfinished"] == 0 and podi["statuses"]["succeeded"] == args.jobs
    ratio = podi["wallSeconds"] / direct["wallSeconds"] if podi["unfinished"] == 0 else None
    return {
        "jobs": args.jobs,
        "graph": "EmptyImage 64x48 → ImageInvert → SaveImage (filename_prefix unique per job)",
        "comfyNodeDelay": args.node_delay,
        "maxConcurrency": args.max_concurrency,
        "workerThreads": args.worker_threads,
        "direct": direct,
        "podi": podi,
        "ratio": round(ratio, 3) if ratio else None,
        "allSucceeded": ok,
    }


# --- phase 5: memory ------------------------------------------------------------------------


def plain_daphne_idle(env: dict, procs: Processes, token_user: str) -> dict:
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daphne = str(Path(PYTHON).parent / "daphne")
    proc = procs.start(
        "daphne-idle",
        [daphne, "-b", "127.0.0.1", "-p", str(port), "podi.asgi:application"],
        {**env, "PUBLIC_BASE_URL": base},
    )
    try:
        wait_http(proc, base, "daphne-idle", procs)
        token = login(base, token_user)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            for _ in range(20):  # touch the main code paths once so the figure is not cold
                http.get("/api/tasks/v1?pageSize=20").raise_for_status()
                http.get("/api/abilities").raise_for_status()
                http.get("/api/wallet/v1/balance").raise_for_status()
        time.sleep(3)
        return {"process": "daphne podi.asgi:application (web only)", **rss_mb(proc.pid)}
    finally:
        procs.stop(proc)
        procs.started = [(n, p) for n, p in procs.started if p is not proc]


# --- end checks -----------------------------------------------------------------------------


def check_end_state(groups: dict[str, list], accepted: dict[str, int]) -> dict:
    """Wallet invariants for every user; every task terminal exactly once, hold settled to match;
    as many tasks as HTTP accepted, per group of users."""
    from django.db.models import Count

    from podi.realtime.models import Event
    from tasks.models import Task
    from tests.wallet.invariants import assert_wallet_invariants
    from wallet.models import Hold

    report: dict = {"ok": True, "problems": []}
    for group, users in groups.items():
        entry = {
            "users": len(users),
            "tasks": 0,
            "acceptedByHttp": accepted[group],
            "byStatus": {},
            "notTerminal": 0,
            "terminalWithoutFinishedAt": 0,
            "tasksWithoutExactlyOneTerminalEvent": 0,
            "holdsNotMatchingOutcome": 0,
            "frozenLeft": 0,
            "walletInvariants": "hold",  # assert_wallet_invariants raises otherwise
            "failures": {},
        }
        for user in users:
            account = assert_wallet_invariants(user)
            tasks = Task.objects.filter(user=user)
            for status, n in tasks.values_list("status").annotate(n=Count("id")):
                entry["byStatus"][status] = entry["byStatus"].get(status, 0) + n
            terminal_events = dict(
                Event.objects.filter(user=user, type="task.status", payload__status__in=TERMINAL)
                .exclude(task_public_id="")
                .values_list("task_public_id")
                .annotate(n=Count("id"))
            )
            holds = dict(Hold.objects.filter(account=account).values_list("task_id", "status"))
            for public_id, status, finished in tasks.values_list(
                "public_id", "status", "finished_at"
            ):
                entry["tasks"] += 1
                entry["notTerminal"] += status not in TERMINAL
                entry["terminalWithoutFinishedAt"] += status in TERMINAL and finished is None
                entry["tasksWithoutExactlyOneTerminalEvent"] += terminal_events.get(public_id) != 1
                expected = "confirmed" if status == "succeeded" else "released"
                entry["holdsNotMatchingOutcome"] += holds.get(public_id) != expected
            entry["frozenLeft"] += account.frozen
            for code, message, attempts in tasks.filter(status="failed").values_list(
                "error_code", "error_message", "attempts"
            ):
                count(entry["failures"], f"{code} after {attempts} attempt(s): {message[:100]}")
        report[group] = entry
        problems = [k for k in ("notTerminal", "terminalWithoutFinishedAt",
                                "tasksWithoutExactlyOneTerminalEvent", "holdsNotMatchingOutcome",
                                "frozenLeft") if entry[k]]  # fmt: skip
        if entry["acceptedByHttp"] != entry["tasks"]:
            problems.append(f"accepted {entry['acceptedByHttp']} != tasks {entry['tasks']}")
        if problems:
            report["ok"] = False
            report["problems"].append({group: problems})
    return report


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="pgbench and throughput phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--users", type=int, default=1, help="submitting users (client i acts as user i %% N)"
    )
    parser.add_argument("--jobs", type=int, default=100, help="jobs in the overhead phase")
    parser.add_argument("--admin-url", default=default_admin_url(), help="a PostgreSQL URL")
    parser.add_argument("--rate", type=float, default=100.0, help="paced submits per second")
    parser.add_argument("--paced-seconds", type=int, default=10)
    parser.add_argument("--max-concurrency", type=int, default=8, help="the executor's")
    parser.add_argument("--worker-threads", type=int, default=8, help="WORKER_THREADS")
    parser.add_argument("--node-delay", type=float, default=0.0, help="ComfyUI node_delay (s)")
    parser.add_argument("--split", action="store_true", help="daphne + rundramatiq + reconcile")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL")
                        or "redis://127.0.0.1:6379/0")  # fmt: skip
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for the platform processes (e.g. DATABASE_CONN_MAX_AGE=60)",
    )  # fmt: skip
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
    name, ref_name = f"podi_bench_tasks_{suffix}", f"podi_bench_tpcb_{suffix}"
    url, ref_url = with_database(args.admin_url, name), with_database(args.admin_url, ref_name)
    prefix = f"podi-bench-tasks-{suffix}"
    data_dir = Path(tempfile.mkdtemp(prefix="podi-bench-tasks-"))
    procs = Processes(data_dir)
    held: dict = {}  # things run() starts that the clean-up must stop (the ComfyUI server)
    created: list[str] = []
    try:
        for db in (name, ref_name):
            admin_execute(args.admin_url, f'CREATE DATABASE "{db}"')
            created.append(db)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"REDIS_URL", "BROKER_URL", "DATABASE_URL", "PODI_DATA_DIR", "REDIS_PREFIX"}
        }
        env.update(
            DATABASE_URL=url,
            REDIS_URL=args.redis_url,
            REDIS_PREFIX=prefix,
            PODI_DATA_DIR=str(data_dir / "data"),
            PODI_ADMIN_PASSWORD=secrets.token_urlsafe(16),
            RATE_LIMIT="100000000/min",
            RATE_LIMIT_LOGIN="100000/min",  # the bench logs in many users from one address
            LOG_LEVEL="warning",
            WORKER_THREADS=str(args.worker_threads),
            DJANGO_SETTINGS_MODULE="podi.settings",
        )
        for item in args.env:
            key, _, value = item.partition("=")
            env[key] = value
        os.environ.clear()
        os.environ.update(env)
        return run(args, url, ref_url, env, procs, held)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({exc or 'SIGINT'}); cleaning up", file=sys.stderr)
        return 130
    except Exception:
        for proc_name, _ in procs.started:
            print(
                f"--- last lines of {proc_name}.log ---\n{procs.tail(proc_name)}", file=sys.stderr
            )
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if held.get("comfy") is not None:
            held["comfy"].stop()
        if "django" in sys.modules:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
        for db in created:
            with contextlib.suppress(Exception):
                admin_execute(args.admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(args.redis_url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        shutil.rmtree(data_dir, ignore_errors=True)


def run(args, url: str, ref_url: str, env: dict, procs: Processes, held: dict) -> int:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import django

    django.setup()
    import psycopg
    from django.core.management import call_command

    from tests.servers import ComfyUITestServer

    began = time.monotonic()
    call_command("migrate", verbosity=0)
    with psycopg.connect(url) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    machine = {
        "nproc": os.cpu_count(),
        "postgres": pg,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }
    print(f"tasks bench — machine: nproc={machine['nproc']}, PostgreSQL {pg}, "
          f"Python {machine['python']}, load {machine['loadavg'][0]:.2f}")  # fmt: skip

    print(f"  [1/5] reference: pgbench TPC-B, {args.clients} clients, {args.seconds} s …")
    reference = reference_tpcb(ref_url, args.clients, args.seconds)
    print(f"        {reference['tps']:.0f} tps")

    comfy = held["comfy"] = ComfyUITestServer()
    comfy.node_delay = args.node_delay
    comfy.start()
    users = setup_fixtures(args, comfy.url)
    platform_info = start_platform(args, env, procs)
    base = platform_info["base"]
    print(f"  platform: {platform_info['mode']} at {base}")
    submit_users = [users[f"bench-submit-{i}"] for i in range(args.users)]
    submit_tokens = {user.pk: login(base, user.username) for user in submit_users}
    tokens = list(submit_tokens.values())
    run_token = login(base, "bench-run")
    time.sleep(2)
    memory = {
        "web": {"process": platform_info["mode"], "idleAtStart": rss_mb(platform_info["web"].pid)}
    }

    print(f"  [2/5] submit throughput: {args.clients} clients, {args.seconds} s …")
    with no_collector_pauses():
        throughput = asyncio.run(_throughput(base, tokens, args.clients, args.seconds))
    print(f"  [3/5] paced submit latency: {args.rate:.0f}/s for {args.paced_seconds} s …")
    with no_collector_pauses():
        paced = asyncio.run(_paced(base, tokens, args.rate, args.paced_seconds))
    cancel = cancel_parked(base, submit_tokens, args.clients)
    print(f"        canceled {cancel['canceled']} parked tasks at {cancel['cancelsPerSecond']}/s")

    print(f"  [4/5] overhead: {args.jobs} jobs direct vs through PODI …")
    overhead = phase_overhead(args, comfy, base, run_token, url)

    print("  [5/5] memory …")
    time.sleep(3)
    memory["web"]["idleAfterLoad"] = rss_mb(platform_info["web"].pid)
    server_errors = {n: procs.error_summary(n) for n, _ in procs.started}
    if args.split:
        memory["worker"] = {"process": "manage.py rundramatiq (tree)",
                            "rssMb": tree_rss_mb(platform_info["worker"].pid)}  # fmt: skip
    procs.stop_all()
    memory["plainDaphne"] = plain_daphne_idle(env, procs, "bench-run")

    accepted = {"submit": throughput["accepted"] + paced["accepted"], "run": 3 + args.jobs}
    end_state = check_end_state({"submit": submit_users, "run": [users["bench-run"]]}, accepted)

    # --- figures side by side -----------------------------------------------------------
    share = throughput["tasksPerSecond"] / reference["tps"]
    p99 = (paced["latencyMs"] or {}).get("p99")
    ratio = overhead["ratio"]
    web_idle = memory["web"]["idleAtStart"]["rssMb"]
    timings = overhead["podi"]["timings"]
    daphne_idle = memory["plainDaphne"]["rssMb"]
    rows = [
        ("reference: pgbench TPC-B", f"{reference['tps']:.0f} tps", "—", "—", None),
        (
            "submit throughput",
            f"{throughput['tasksPerSecond']:.1f} tasks/s",
            f"{share:.1%} of TPC-B",
            f"≥ 15 % ({0.15 * reference['tps']:.0f}/s)",
            share >= TARGETS["submitShare"],
        ),
        (
            "  latency under that load",
            f"p50 {throughput['latencyMs']['p50']} / p99 {throughput['latencyMs']['p99']} ms",
            "",
            "",
            None,
        ),
        (
            f"paced submit {args.rate:.0f}/s, p99",
            f"p50 {paced['latencyMs']['p50']} / p99 {p99} ms",
            (
                f"SATURATED after {paced['requests']} sent"
                if paced["saturated"]
                else f"served {paced['completedPerSecond']}/s"
            ),
            "p99 ≤ 50 ms",
            p99 is not None
            and p99 <= TARGETS["pacedP99Ms"]
            and not paced["errors"]
            and not paced["saturated"],
        ),
        (
            f"overhead, {args.jobs} jobs",
            f"PODI {overhead['podi']['wallSeconds']} s",
            f"direct {overhead['direct']['wallSeconds']} s",
            "≤ 1.10×",
            ratio is not None and ratio <= TARGETS["overheadRatio"] and overhead["allSucceeded"],
        ),
        ("  ratio", f"{ratio}×" if ratio else "—", "", "", None),
        (
            "  per task (p50)",
            f"queued {timings['submitToDispatchMs']['p50']} ms",
            f"run {timings['dispatchToFinishMs']['p50']} ms",
            "",
            None,
        ),
        (
            "web RSS idle" + (" (up: web+worker)" if not args.split else ""),
            f"{web_idle} MB",
            f"after load {memory['web']['idleAfterLoad']['rssMb']} MB",
            "≤ 150 MB",
            web_idle <= TARGETS["idleRssMb"],
        ),
        (
            "plain daphne RSS idle",
            f"{daphne_idle} MB",
            "",
            "≤ 150 MB",
            daphne_idle <= TARGETS["idleRssMb"],
        ),
    ]
    verdicts = {"submit": rows[1][4], "paced": rows[3][4], "overhead": rows[4][4],
           "rss": rows[7][4], "daphne": rows[8][4]}  # fmt: skip
    print()
    print(f"  {'what':<34} {'figure':<26} {'reference / detail':<24} {'target':<20} result")
    for what, figure, detail, target, met in rows:
        verdict = "" if met is None else ("MET" if met else "MISSED")
        print(f"  {what:<34} {figure:<26} {detail:<24} {target:<20} {verdict}")
    print(
        f"  end state: {'OK' if end_state['ok'] else 'PROBLEMS ' + json.dumps(end_state['problems'])}"
        f" — wallet invariants hold; submit users {end_state['submit']['byStatus']},"
        f" run user {end_state['run']['byStatus']}"
    )

    for proc_name, found in server_errors.items():
        if found:
            print(f"  server errors logged by {proc_name}: {json.dumps(found, ensure_ascii=False)}")
    for label, phase in (("throughput", throughput), ("paced", paced)):
        if phase["errors"]:
            print(f"  refused submits ({label}): {json.dumps(phase['errors'])}")
    podi_run = overhead["podi"]
    print(
        f"  overhead: the WebSocket stream delivered {podi_run['terminalEventsOnStream']} of "
        f"{args.jobs} terminal task.status events; submitting took {podi_run['postSeconds']} s"
    )
    for group in ("submit", "run"):
        if end_state[group]["failures"]:
            print(f"  failed tasks ({group}): {json.dumps(end_state[group]['failures'])}")
    if overhead["podi"]["submitErrorsRetried"]:
        print(f"  overhead submits retried: {json.dumps(overhead['podi']['submitErrorsRetried'])}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"tasks_bench-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "bench": "tasks: submit throughput/latency, overhead, memory",
                "at": stamp,
                "machine": machine,
                "platform": platform_info["mode"],
                "settings": {
                    "clients": args.clients,
                    "users": args.users,
                    "seconds": args.seconds,
                    "rate": args.rate,
                    "pacedSeconds": args.paced_seconds,
                    "jobs": args.jobs,
                    "maxConcurrency": args.max_concurrency,
                    "workerThreads": args.worker_threads,
                    "nodeDelay": args.node_delay,
                    "extraEnv": args.env,
                },
                "reference": reference,
                "submitThroughput": {**throughput, "shareOfTpcb": round(share, 4)},
                "pacedSubmit": paced,
                "cancelParked": cancel,
                "overhead": overhead,
                "memory": memory,
                "endState": end_state,
                "serverErrors": server_errors,
                "targets": {
                    "submitShare": {"target": 0.15, "value": round(share, 4),
                                    "met": verdicts["submit"]},
                    "pacedP99Ms": {"target": 50, "value": p99, "met": verdicts["paced"]},
                    "overheadRatio": {"target": 1.10, "value": ratio, "met": verdicts["overhead"]},
                    "idleRssMb": {"target": 150, "value": web_idle, "met": verdicts["rss"],
                                  "plainDaphne": daphne_idle, "plainDaphneMet": verdicts["daphne"]},
                },
                "runtimeSeconds": round(time.monotonic() - began, 1),
                "loadavgAtEnd": os.getloadavg(),
            },
            indent=2,
            default=str,
        )
    )  # fmt: skip
    print(f"  written: {out.relative_to(ROOT)}  (ran {time.monotonic() - began:.0f} s)")
    return 0 if end_state["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
