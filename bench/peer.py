#!/usr/bin/env python
"""Peer bench (issue #13): the same jobs straight to a ComfyUI and through PODI, in one run.

The job is the model-free graph EmptyImage 64×64 → ImageInvert → SaveImage (``filename_prefix``
unique per job, as PODI makes it unique per attempt, so nothing is served from ComfyUI's cache
but the two first nodes). One job, each way, as a client sees it:

* **direct** — one ``/ws?clientId=`` socket per run; ``POST /prompt`` (``client_id``,
  ``prompt_id``), wait for ``execution_success`` of that prompt on the socket, ``GET
  /history/{id}`` for the output's name, ``GET /view`` of the PNG;
* **PODI** — one ``/api/notify/v1/stream`` socket per run (a user's JWT); ``POST
  /api/tasks/v1/submit``, wait for the ``task.status`` ``succeeded`` event of that task, ``GET``
  the signed output URL the event carries (``GET /api/tasks/v1/{id}`` for it only when the event
  has none, counted as ``taskReadsForUrls``: a PODI before the stream signed URLs).

Phases, each interleaved so that machine noise hits both ways alike:

1. sequential — ``--jobs`` jobs one after another: direct, PODI, direct, PODI, … → p50/p95 per job;
2. burst — ``--burst`` jobs at once, ``--burst-rounds`` times: direct burst, PODI burst, … → wall
   (first request to last download), p50/p95 of each job's completion from the burst's start.

Besides: the latency from ComfyUI's own completion (the ``timestamp`` of ``execution_success``
in ``/history``, ms) to the moment the client holds PODI's ``succeeded`` event (the direct
client's socket gives the same figure for ComfyUI itself); SQL statements per task, COUNTED by
``PODI_SQL_COUNT_DIR`` (``podi/sqlcount.py``: an execute wrapper in every PODI process, by HTTP
route or thread), split into submit / the client's reads / the rest; PODI CPU seconds per task,
utime+stime from ``/proc/<pid>/stat`` of every process of PODI's process tree before and after
(and its idle rate, measured before the phases, so background work can be told apart).

By default the bench starts everything itself: the protocol-faithful ComfyUI test server
(``tests/servers/comfyui.py``, ``node_delay=0``, in a process of its own) and PODI (``manage.py
up``: Daphne + the Dramatiq worker + the reconciler, as ``make run`` does) on the embedded
defaults, or on PostgreSQL + Redis when ``DATABASE_URL``/``REDIS_URL`` are set (or ``--config
postgres``): a throwaway database ``podi_bench_peer_*`` on that server and a private Redis key
prefix, removed at the end (also on Ctrl-C). ``--comfyui URL`` targets a running ComfyUI instead.

    .venv/bin/python bench/peer.py [--comfyui http://127.0.0.1:8199] [--jobs 50] [--burst 100]
        [--burst-rounds 2] [--config auto|embedded|postgres] [--max-concurrency 8]
        [--worker-threads 8] [--tag baseline] [--env NAME=VALUE ...]

JSON goes to ``bench/results/peer-<config>[-<tag>]-<timestamp>.json``; a table to stdout.
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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from steady import no_collector_pauses
from tasks_bench import (
    INVERT_GRAPH,
    INVERT_SCHEMA,
    PASSWORD,
    Interrupted,
    Processes,
    _on_signal,
    admin_execute,
    default_admin_url,
    free_port,
    pct,
    wait_http,
    with_database,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
ACTION = "bench-peer-invert"
JOB_PARAMS = {"width": 64, "height": 64, "color": 16711680}
TERMINAL = ("succeeded", "failed", "canceled")
SUBMIT_ROUTE = "http:POST /api/tasks/v1/submit"
# the client's reads after the event (not part of "submit to terminal event")
READ_ROUTES = ("http:GET /api/tasks/v1/{id}", "http:GET /media-download/{id}")
PERIODIC_THREADS = ("thread:podi-reconciler", "thread:podi-worker-lease")
# issue #13, "Targets": today's figures and the targets (ratios in one run on one machine)
# (PostgreSQL + Redis: 23–35× and 18–40× today; embedded: the burst target is ≤ 3×)
TARGETS = {
    "seqP50Ratio": ("5–6×", 2.0),
    "burstWallRatio": ("7–10×", 1.5),
    "succeededAfterComfyP95Ms": ("up to ≈1 s", 10.0),
    "sqlPerTask": ("≈ 98", 30.0),
    "sqlSubmitPerTask": ("—", 8.0),
    "cpuMsPerTask": ("≈ 300 ms", 20.0),
}


# --- small helpers --------------------------------------------------------------------------


def summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {
        "n": len(values),
        "p50": pct(values, 0.50),
        "p95": pct(values, 0.95),
        "max": round(max(values) * 1000, 2),
        "mean": round(statistics.fmean(values) * 1000, 2),
    }


def ratio(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def progress(text: str) -> None:
    print(f"  {datetime.now(UTC).strftime('%H:%M:%S')} {text}", flush=True)


TICKS = os.sysconf("SC_CLK_TCK")


def _roles(meter: dict) -> str:
    roles = meter.get("podiCpuMsPerTaskByRole") or {}
    shown = {role: ms for role, ms in roles.items() if role != "up"} or roles  # embedded: "up"
    return " ".join(f"{role} {ms:g}" for role, ms in shown.items())


def tree_cpu_seconds(root: int) -> tuple[float, list[int]]:
    """utime+stime of ``root`` and all its descendants (and of children they reaped)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            # fields[11..14]: utime stime cutime cstime (stat fields 14..17)
            times[pid] = sum(int(x) for x in fields[11:15]) / TICKS
    members, pending = [], [root]
    while pending:
        pid = pending.pop()
        if pid in times:
            members.append(pid)
            pending.extend(child for child, parent in parents.items() if parent == pid)
    return sum(times[pid] for pid in members), sorted(members)


def role_cpu_seconds(pids: list[int]) -> dict[str, float]:
    """utime+stime of each of ``pids`` summed by role (``manage.py up --role web|worker|…``;
    the supervising parent is "up")."""
    roles: dict[str, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            role = argv[argv.index(b"--role") + 1].decode() if b"--role" in argv else "up"
            text = Path(f"/proc/{pid}/stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            roles[role] = roles.get(role, 0.0) + sum(int(x) for x in fields[11:13]) / TICKS
    return roles


def proc_cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return sum(int(x) for x in fields[11:13]) / TICKS
    return None


class SqlCounts:
    """Reads the per-process totals ``podi/sqlcount.py`` writes into ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory

    def read(self) -> dict[str, dict[str, int]]:
        merged: dict[str, dict[str, int]] = {}
        for path in self.directory.glob("sql-*.json"):
            with contextlib.suppress(OSError, ValueError):
                body = json.loads(path.read_text())
                for label, verbs in body["counts"].items():
                    entry = merged.setdefault(label, {})
                    for verb, n in verbs.items():
                        entry[verb] = entry.get(verb, 0) + n
        return merged

    def settled(self, quiet: float = 0.7, limit: float = 8.0) -> dict[str, dict[str, int]]:
        """The totals once they stopped changing for ``quiet`` s (trailing work included)."""
        deadline = time.monotonic() + limit
        last = self.read()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.read()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    @staticmethod
    def delta(after: dict, before: dict) -> dict[str, dict[str, int]]:
        out = {}
        for label, verbs in after.items():
            diff = {v: n - before.get(label, {}).get(v, 0) for v, n in verbs.items()}
            diff = {v: n for v, n in diff.items() if n}
            if diff:
                out[label] = diff
        return out


def sql_split(delta: dict[str, dict[str, int]], tasks: int) -> dict:
    """Statements per task: submit, the client's reads, periodic threads, the rest."""

    def total(pred) -> int:
        return sum(v.get("total", 0) for label, v in delta.items() if pred(label))

    submit = total(lambda lb: lb == SUBMIT_ROUTE)
    reads = total(lambda lb: lb.startswith(READ_ROUTES))
    periodic = total(lambda lb: lb in PERIODIC_THREADS)
    everything = total(lambda lb: True)
    rest = everything - submit - reads
    per = lambda n: round(n / tasks, 2) if tasks else None  # noqa: E731
    return {
        "tasks": tasks,
        "submitPerTask": per(submit),
        "submitToTerminalPerTask": per(submit + rest),  # everything but the client's reads
        "restPerTask": per(rest),
        "ofWhichPeriodicThreadsPerTask": per(periodic),
        "clientReadsPerTask": per(reads),
        "allPerTask": per(everything),
        "byLabel": dict(sorted(delta.items(), key=lambda kv: -kv[1].get("total", 0))),
        "note": "cursor.execute/executemany calls (savepoints included; an executemany counts "
        "once); the driver's BEGIN and commit/rollback are not statements here",
    }


# --- the ComfyUI test server in a process of its own ----------------------------------------


def serve_test_comfyui() -> int:
    """``peer.py --serve-test-comfyui``: run the test server until SIGTERM; print its URL."""
    sys.path.insert(0, str(ROOT))
    from tests.servers.comfyui import ComfyUITestServer

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    server = ComfyUITestServer()
    server.node_delay = 0.0
    server.start()
    print(f"URL {server.url}", flush=True)
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


def start_test_comfyui(procs: Processes) -> tuple[str, subprocess.Popen]:
    proc = procs.start(
        "comfyui-test", [PYTHON, "-u", __file__, "--serve-test-comfyui"], os.environ.copy()
    )
    deadline = time.monotonic() + 30
    log = procs.log_dir / "comfyui-test.log"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the ComfyUI test server exited:\n{procs.tail('comfyui-test')}")
        match = re.search(r"^URL (\S+)", log.read_text(errors="replace"), re.M)
        if match:
            return match.group(1), proc
        time.sleep(0.1)
    raise RuntimeError("the ComfyUI test server did not start within 30 s")


# --- the two clients ------------------------------------------------------------------------


def session(limit: int):
    """An aiohttp client session: both ways use the same client library and limits.

    (httpx's async pool costs this process 2–4× the CPU of aiohttp with 100 jobs in flight, which
    slowed the direct way most and hid PODI's overhead: 100 direct jobs took 2.3 s against 0.6 s.)
    """
    import aiohttp

    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300))


class _SocketClient:
    """An aiohttp session, its WebSocket and the task reading it; ``close`` ends all three."""

    http = None
    ws = None
    reader = None

    async def close(self) -> None:
        if self.reader:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()


class DirectClient(_SocketClient):
    """A plain ComfyUI client: one socket, POST /prompt, wait on the socket, /history, /view."""

    def __init__(self, url: str, limit: int):
        self.url = url.rstrip("/")
        self.client_id = f"bench-peer-{uuid.uuid4().hex}"
        self.limit = limit
        self.http = None
        self.waiting: dict[str, asyncio.Future] = {}
        self.done_at: dict[str, float] = {}  # prompt id → time.time() of execution_success
        self.ws = None
        self.reader = None
        self.count = 0
        self.history_retries = 0

    async def open(self) -> None:
        self.http = session(self.limit)
        self.ws = await self.http.ws_connect(
            f"{self.url}/ws?clientId={self.client_id}", max_msg_size=0, heartbeat=None
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        import aiohttp

        async for raw in self.ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                continue  # preview frames
            message = json.loads(raw.data)
            kind, data = message.get("type"), message.get("data") or {}
            prompt_id = data.get("prompt_id")
            if kind == "execution_success":
                self.done_at.setdefault(prompt_id, time.time())
            elif kind in ("execution_error", "execution_interrupted"):
                future = self.waiting.get(prompt_id)
                if future and not future.done():
                    future.set_result(kind)
            elif kind == "executing" and data.get("node") is None and prompt_id:
                # ComfyUI sends this after writing the history entry (main.py prompt_worker),
                # so a client reads /history now; execution_success comes before the write
                future = self.waiting.get(prompt_id)
                if future and not future.done():
                    future.set_result("execution_success")

    async def job(self, tag: str) -> dict:
        graph = copy.deepcopy(INVERT_GRAPH)
        graph["1"]["inputs"].update(JOB_PARAMS)
        self.count += 1
        graph["3"]["inputs"]["filename_prefix"] = f"bench-direct/{tag}-{self.count}/inv"
        prompt_id = str(uuid.uuid4())
        future = self.waiting[prompt_id] = asyncio.get_running_loop().create_future()
        began = time.perf_counter()
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        async with self.http.post(f"{self.url}/prompt", json=body) as response:
            text = await response.text()
            if response.status != 200 or json.loads(text).get("node_errors"):
                raise RuntimeError(f"direct /prompt: {response.status} {text[:300]}")
        outcome = await asyncio.wait_for(future, 300)
        self.waiting.pop(prompt_id, None)
        if outcome != "execution_success":
            raise RuntimeError(f"direct prompt {prompt_id}: {outcome}")
        entry = None
        for _ in range(2000):  # not expected after `executing` null; a safety net (§1.10)
            async with self.http.get(f"{self.url}/history/{prompt_id}") as response:
                entry = (await response.json(content_type=None)).get(prompt_id)
            if entry:
                break
            self.history_retries += 1
            await asyncio.sleep(0.005)
        if not entry:
            raise RuntimeError(f"direct prompt {prompt_id}: no history entry")
        image = entry["outputs"]["3"]["images"][0]
        params = {k: image[k] for k in ("filename", "subfolder", "type")}
        async with self.http.get(f"{self.url}/view", params=params) as response:
            content = await response.read()
            if response.status != 200 or not content.startswith(b"\x89PNG"):
                raise RuntimeError(f"direct /view: {response.status}")
        ended = time.perf_counter()
        return {
            "seconds": ended - began,
            "endedAt": ended,
            "promptId": prompt_id,
            "comfyDone": comfy_done_ms(entry),
            "clientSawDone": self.done_at.pop(prompt_id, None),
            "bytes": len(content),
        }


def comfy_done_ms(entry: dict) -> float | None:
    """ComfyUI's own completion: the ``execution_success`` timestamp in history (ms epoch)."""
    for name, data in (entry.get("status") or {}).get("messages") or []:
        if name == "execution_success" and isinstance(data, dict) and "timestamp" in data:
            return float(data["timestamp"])
    return None


class PodiClient(_SocketClient):
    """A PODI user: one stream socket, submit, wait for ``succeeded``, signed download."""

    def __init__(self, base: str, token: str, limit: int):
        self.base = base
        self.token = token
        self.limit = limit
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = None
        self.waiting: dict[str, asyncio.Future] = {}
        self.early: dict[str, tuple[str, float, dict]] = {}
        self.ws = None
        self.reader = None
        self.count = 0
        self.retried: dict[str, int] = {}
        self.event_timeout = 60.0
        self.events_missed: list[str] = []
        self.detail_reads = 0  # terminal events without signed output URLs (GET task instead)
        self.last_seq = 0
        self.reconnects: list[str] = []
        self.frames = 0

    async def open(self) -> None:
        self.http = session(self.limit)
        await self._connect()
        self.reader = asyncio.create_task(self._read())

    async def _connect(self) -> None:
        url = self.base.replace("http", "ws", 1) + f"/api/notify/v1/stream?token={self.token}"
        if self.last_seq:
            url += f"&after={self.last_seq}"  # replay what was missed, then live (README)
        self.ws = await self.http.ws_connect(url, max_msg_size=0, heartbeat=None)
        hello = json.loads((await asyncio.wait_for(self.ws.receive(), 20)).data)
        if hello.get("type") != "hello":
            raise RuntimeError(f"stream: {hello}")

    async def _read(self) -> None:
        """Follow the stream; when PODI closes it (e.g. 1011 after a database error), reconnect
        with ``?after=<last seq>`` as a client should, and count it."""
        import aiohttp

        while True:
            ended = "closed"
            try:
                async for raw in self.ws:
                    if raw.type != aiohttp.WSMsgType.TEXT:
                        continue
                    self.frames += 1
                    message = json.loads(raw.data)
                    self.last_seq = max(self.last_seq, message.get("seq") or 0)
                    payload = message.get("payload") or {}
                    if message.get("type") != "task.status":
                        continue
                    if payload.get("status") not in TERMINAL:
                        continue
                    seen = (payload["status"], time.time(), message)
                    future = self.waiting.get(payload.get("taskId"))
                    if future and not future.done():
                        future.set_result(seen)
                    else:
                        self.early[payload.get("taskId")] = seen
            except (aiohttp.ClientError, ValueError) as exc:
                ended = f"{type(exc).__name__}: {exc}"[:200]
            self.reconnects.append(
                f"{time.strftime('%H:%M:%S')} {ended}, close code {self.ws.close_code}, "
                f"last seq {self.last_seq}"
            )
            while True:
                try:
                    await self._connect()
                    break
                except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError):
                    await asyncio.sleep(0.5)

    async def _get_json(self, path: str) -> tuple[int, dict | str]:
        async with self.http.get(self.base + path, headers=self.headers) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def _poll_terminal(self, task_id: str) -> str:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status, task = await self._get_json(f"/api/tasks/v1/{task_id}")
            if status == 200 and task.get("status") in TERMINAL:
                return task["status"]
            await asyncio.sleep(0.5)
        raise RuntimeError(f"PODI task {task_id} not terminal after the event timeout + 600 s")

    async def job(self, tag: str) -> dict:
        self.count += 1
        body = {"action": ACTION, "params": JOB_PARAMS, "clientRef": f"{tag}-{self.count}"}
        began = time.perf_counter()
        for attempt in range(30):  # a 5xx rolled the submit back: send it again (counted)
            async with self.http.post(
                f"{self.base}/api/tasks/v1/submit", json=body, headers=self.headers
            ) as response:
                status, text = response.status, await response.text()
                retry_after = response.headers.get("Retry-After", "")
            if status < 500:
                break
            key = f"{status} {text[:80]}"
            self.retried[key] = self.retried.get(key, 0) + 1
            wait = float(retry_after) if retry_after.isdigit() else 0.1 * (attempt + 1)
            await asyncio.sleep(min(wait, 1.0))  # as a client honouring Retry-After, capped
        if status != 202:
            raise RuntimeError(f"PODI submit: {status} {text[:300]}")
        submitted = time.perf_counter()
        task_id = json.loads(text)["taskId"]
        future = asyncio.get_running_loop().create_future()
        if task_id in self.early:
            future.set_result(self.early.pop(task_id))
        self.waiting[task_id] = future
        try:
            outcome, seen_at, event = await asyncio.wait_for(future, self.event_timeout)
        except TimeoutError:
            # the stream did not bring the terminal event: read the task as a client would
            # (counted: a missing event is a realtime bug, but must not stall the bench)
            self.events_missed.append(task_id)
            outcome, seen_at, event = await self._poll_terminal(task_id), None, {}
        self.waiting.pop(task_id, None)
        if outcome != "succeeded":
            detail = await self._get_json(f"/api/tasks/v1/{task_id}")
            raise RuntimeError(f"PODI task {task_id} ended {outcome}: {str(detail)[:400]}")
        # The event's outputs carry signed URLs; a client asks for the task only without them.
        outputs = (event.get("payload") or {}).get("outputs") or []
        url = outputs[0].get("url") if outputs else None
        if not url:
            self.detail_reads += 1
            status, task = await self._get_json(f"/api/tasks/v1/{task_id}")
            if status != 200:
                raise RuntimeError(f"PODI GET task: {status} {str(task)[:200]}")
            url = task["outputs"][0]["url"]
        async with self.http.get(url) as response:  # signed: no bearer
            content = await response.read()
            if response.status != 200 or not content.startswith(b"\x89PNG"):
                raise RuntimeError(f"PODI signed download: {response.status}")
        ended = time.perf_counter()
        return {
            "seconds": ended - began,
            "submitSeconds": submitted - began,
            "endedAt": ended,
            "taskId": task_id,
            "eventAt": seen_at,
            "bytes": len(content),
        }


# --- PODI -------------------------------------------------------------------------------------


def setup_fixtures(comfy_url: str, max_concurrency: int) -> None:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from integrations.models import Ability, Executor, HealthStatus, Workflow, WorkflowBinding
    from integrations.services import workflow_version_create
    from wallet.services import wallet_grant

    executor = Executor.objects.create(
        name="bench-peer-comfyui",
        kind="comfyui",
        base_url=comfy_url,
        max_concurrency=max_concurrency,
        health_status=HealthStatus.HEALTHY,
        health_checked_at=timezone.now(),
    )
    workflow = Workflow.objects.create(name="bench-peer-invert", kind="comfyui")
    workflow_version_create(
        workflow=workflow, definition=INVERT_GRAPH, params_schema=INVERT_SCHEMA, activate=True
    )
    ability = Ability.objects.create(code=ACTION, display_name=ACTION, points=1)
    WorkflowBinding.objects.create(
        ability=ability, workflow=workflow, executor=executor, queue_timeout=3600, run_timeout=600
    )
    user = get_user_model().objects.create_user("bench-peer", password=PASSWORD)
    wallet_grant(user=user, points=10**9, reason="bench", reference="bench-peer")


def login(base: str) -> str:
    import httpx

    response = httpx.post(
        f"{base}/api/auth/v1/login",
        json={"username": "bench-peer", "password": PASSWORD},
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"login: {response.status_code} {response.text[:300]}")
    return response.json()["accessToken"]


def prompt_ids(task_ids: list[str]) -> dict[str, str]:
    """task id → the ComfyUI prompt id PODI used (its last attempt)."""
    from tasks.models import Task

    return dict(Task.objects.filter(public_id__in=task_ids).values_list("public_id", "external_id"))


def tasks_wall(task_ids: list[str], started_at: float) -> float | None:
    """s from a burst's first request to the last of its tasks' ``finished_at`` (server side:
    what the client would see with every terminal event on time)."""
    from django.db.models import Max

    from tasks.models import Task

    last = Task.objects.filter(public_id__in=task_ids).aggregate(m=Max("finished_at"))["m"]
    return round(last.timestamp() - started_at, 3) if last else None


def error_messages(log: Path, limit: int = 20) -> dict[str, int]:
    """The ``message`` of each error line PODI logged, counted (first ``limit`` kinds)."""
    found: dict[str, int] = {}
    if not log.exists():
        return found
    for line in log.read_text(errors="replace").splitlines():
        if '"level": "error"' not in line and '"level": "critical"' not in line:
            continue
        with contextlib.suppress(ValueError):
            body = json.loads(line)
            key = f"[{body.get('logger')}] {str(body.get('message'))[:120]}"
            if key in found or len(found) < limit:
                found[key] = found.get(key, 0) + 1
    return found


def end_state(task_ids: list[str]) -> dict:
    from django.db.models import Count

    from tasks.models import Task

    rows = Task.objects.filter(public_id__in=task_ids)
    by_status = dict(rows.values_list("status").annotate(n=Count("id")))
    attempts = dict(rows.values_list("attempts").annotate(n=Count("id")))
    return {"byStatus": by_status, "attempts": {str(k): v for k, v in attempts.items()}}


class ConnectionSampler:
    """Peak and mean PostgreSQL connections to PODI's database (pg_stat_activity, every 0.2 s)."""

    def __init__(self, admin_url: str, db_name: str):
        import threading

        self.admin_url, self.db_name = admin_url, db_name
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-pg-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg

        with contextlib.suppress(Exception), psycopg.connect(self.admin_url, autocommit=True) as db:
            while not self.stop.wait(0.2):
                row = db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.db_name,)
                ).fetchone()
                self.samples.append(row[0])

    def result(self) -> dict:
        self.stop.set()
        self.thread.join(timeout=5)
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as db:
            limit = db.execute("SHOW max_connections").fetchone()[0]
            total = db.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0]
        return {
            "peak": max(self.samples, default=None),
            "mean": round(statistics.fmean(self.samples), 1) if self.samples else None,
            "samples": len(self.samples),
            "maxConnections": int(limit),
            "serverConnectionsAtEnd": total,
            "note": "connections to PODI's own database; the server is shared with other "
            "databases, which count against max_connections too",
        }


# --- phases -----------------------------------------------------------------------------------


class Meter:
    """CPU of PODI's process tree and counted SQL, between two points of the run."""

    def __init__(self, podi_pid: int, sql: SqlCounts, comfy_pid: int | None):
        self.podi_pid, self.sql, self.comfy_pid = podi_pid, sql, comfy_pid

    def mark(self, settle: bool = False) -> dict:
        counts = self.sql.settled() if settle else self.sql.read()
        cpu, members = tree_cpu_seconds(self.podi_pid)
        return {"t": time.monotonic(), "cpu": cpu, "members": members, "sql": counts,
                "roles": role_cpu_seconds(members),
                "comfyCpu": proc_cpu_seconds(self.comfy_pid)}  # fmt: skip

    def between(self, before: dict, after: dict, tasks: int, idle_rate: float) -> dict:
        seconds = after["t"] - before["t"]
        cpu = after["cpu"] - before["cpu"]
        net = cpu - idle_rate * seconds
        out = {
            "windowSeconds": round(seconds, 3),
            "podiCpuSeconds": round(cpu, 3),
            "podiCpuMsPerTask": round(cpu * 1000 / tasks, 2) if tasks else None,
            "podiCpuMsPerTaskNetOfIdle": round(net * 1000 / tasks, 2) if tasks else None,
            "podiProcesses": len(after["members"]),
            # By role: processes alive at both marks (a process started between them counts whole).
            "podiCpuMsPerTaskByRole": {
                role: round((spent - before["roles"].get(role, 0.0)) * 1000 / tasks, 2)
                for role, spent in sorted(after["roles"].items())
            }
            if tasks
            else None,
            "sql": sql_split(SqlCounts.delta(after["sql"], before["sql"]), tasks),
        }
        if before["comfyCpu"] is not None and after["comfyCpu"] is not None:
            out["comfyTestServerCpuSeconds"] = round(after["comfyCpu"] - before["comfyCpu"], 3)
        return out


async def run_sequential(direct: DirectClient, podi: PodiClient, jobs: int, meter: Meter,
                         idle_rate: float) -> dict:  # fmt: skip
    d_runs, p_runs = [], []
    before = meter.mark(settle=True)
    for index in range(jobs):
        d_runs.append(await direct.job(f"seq{index}"))
        p_runs.append(await podi.job(f"seq{index}"))
        if (index + 1) % 10 == 0 or index + 1 == jobs:
            progress(
                f"sequential {index + 1}/{jobs}: direct p50 "
                f"{pct([r['seconds'] for r in d_runs], 0.5)} ms, PODI p50 "
                f"{pct([r['seconds'] for r in p_runs], 0.5)} ms"
            )
    after = meter.mark(settle=True)
    return {"direct": d_runs, "podi": p_runs,
            "meter": meter.between(before, after, jobs, idle_rate)}  # fmt: skip


async def run_burst(direct: DirectClient, podi: PodiClient, size: int, rounds: int, meter: Meter,
                    idle_rate: float) -> dict:  # fmt: skip
    out = {"direct": [], "podi": []}
    for number in range(rounds):
        for way, client in (("direct", direct), ("podi", podi)):
            before = meter.mark(settle=True) if way == "podi" else None
            began, began_wall = time.perf_counter(), time.time()
            runs = await asyncio.gather(*(client.job(f"b{number}-{i}") for i in range(size)))
            wall = max(r["endedAt"] for r in runs) - began
            entry = {
                "wallSeconds": round(wall, 3),
                "completionFromStart": summary([r["endedAt"] - began for r in runs]),
                "runs": runs,
            }
            if before is not None:
                entry["meter"] = meter.between(before, meter.mark(settle=True), size, idle_rate)
                entry["startedAt"] = began_wall
                entry["submitSeconds"] = summary([r["submitSeconds"] for r in runs])
            out[way].append(entry)
            progress(f"burst {number + 1}/{rounds} {way:<6}: {size} jobs, wall {wall:.3f} s")
    return out


def comfy_to_event(podi_runs: list[dict], direct_runs: list[dict], comfy_url: str) -> dict:
    """ms from ComfyUI's ``execution_success`` to the client holding the news, both ways."""
    import httpx

    ids = prompt_ids([r["taskId"] for r in podi_runs])
    podi, missing = [], 0
    with httpx.Client(base_url=comfy_url, timeout=30) as http:
        for run in podi_runs:
            prompt_id = ids.get(run["taskId"])
            entry = http.get(f"/history/{prompt_id}").json().get(prompt_id) if prompt_id else None
            done = comfy_done_ms(entry or {})
            if done is None:
                missing += 1
                continue
            if run["eventAt"] is not None:
                podi.append(run["eventAt"] - done / 1000)
    direct = [r["clientSawDone"] - r["comfyDone"] / 1000 for r in direct_runs
              if r.get("comfyDone") is not None and r.get("clientSawDone") is not None]  # fmt: skip
    return {
        "podiSucceededEventMs": summary([max(0.0, x) for x in podi]),
        "directSocketMs": summary([max(0.0, x) for x in direct]),
        "unmatched": missing,
        "note": "ComfyUI's timestamps are whole ms (time.time()*1000), so figures under ~1 ms "
        "are at the clock's resolution; negative differences are clamped to 0",
    }


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    if "--serve-test-comfyui" in sys.argv:
        return serve_test_comfyui()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="a running ComfyUI (default: start the test server)")
    parser.add_argument("--jobs", type=int, default=50, help="sequential jobs each way")
    parser.add_argument("--burst", type=int, default=100, help="jobs at once in a burst")
    parser.add_argument("--burst-rounds", type=int, default=2, help="direct+PODI burst pairs")
    parser.add_argument("--config", choices=("auto", "embedded", "postgres"), default="auto",
                        help="auto: postgres when DATABASE_URL is a PostgreSQL URL")  # fmt: skip
    parser.add_argument("--admin-url", default=default_admin_url(), help="a PostgreSQL URL")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL")
                        or "redis://127.0.0.1:6379/0")  # fmt: skip
    parser.add_argument("--max-concurrency", type=int, default=8, help="the executor's")
    parser.add_argument("--worker-threads", type=int, default=8, help="WORKER_THREADS")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="idle CPU measurement")
    parser.add_argument("--event-timeout", type=float, default=60.0,
                        help="s to wait for a task's terminal event before reading the task")  # fmt: skip
    parser.add_argument("--tag", default="", help="added to the result's file name")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for the PODI processes",
    )  # fmt: skip
    args = parser.parse_args()
    if args.burst_rounds < 1 or args.burst < 1 or args.jobs < 1:
        parser.error("--jobs, --burst and --burst-rounds must be at least 1")
    if args.config == "auto":
        url = os.environ.get("DATABASE_URL", "")
        args.config = "postgres" if url.startswith(("postgres://", "postgresql://")) else "embedded"

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
    db_name = f"podi_bench_peer_{suffix}"
    db_url = with_database(args.admin_url, db_name)
    prefix = f"podi-bench-peer-{suffix}"
    work = Path(tempfile.mkdtemp(prefix="podi-bench-peer-"))
    procs = Processes(work)
    created = []
    try:
        env = {k: v for k, v in os.environ.items()
               if k not in {"REDIS_URL", "BROKER_URL", "DATABASE_URL", "PODI_DATA_DIR",
                            "REDIS_PREFIX", "PODI_SQL_COUNT_DIR"}}  # fmt: skip
        env.update(
            PODI_DATA_DIR=str(work / "data"),
            PODI_ADMIN_PASSWORD=secrets.token_urlsafe(16),
            RATE_LIMIT="100000000/min",
            RATE_LIMIT_LOGIN="100000/min",
            JWT_ACCESS_TTL="7200",
            LOG_LEVEL="warning",
            WORKER_THREADS=str(args.worker_threads),
            DJANGO_SETTINGS_MODULE="podi.settings",
        )
        if args.config == "postgres":
            admin_execute(args.admin_url, f'CREATE DATABASE "{db_name}"')
            created.append(db_name)
            env.update(DATABASE_URL=db_url, REDIS_URL=args.redis_url, REDIS_PREFIX=prefix)
        for item in args.env:
            key, _, value = item.partition("=")
            env[key] = value
        os.environ.clear()
        os.environ.update(env)
        return run(args, env, procs, work)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({exc or 'SIGINT'}); cleaning up", file=sys.stderr)
        return 130
    except Exception:
        for name, _ in procs.started:
            print(f"--- last lines of {name}.log ---\n{procs.tail(name)}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if "django" in sys.modules:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
        for db in created:
            with contextlib.suppress(Exception):
                admin_execute(args.admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if args.config == "postgres":
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis.from_url(args.redis_url)
                keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
        shutil.rmtree(work, ignore_errors=True)


def run(args, env: dict, procs: Processes, work: Path) -> int:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import django

    django.setup()
    import httpx
    from django.core.management import call_command
    from django.db import connections

    began = time.monotonic()
    comfy_pid = None
    if args.comfyui:
        comfy_url = args.comfyui.rstrip("/")
        comfy_kind = "comfyui"
    else:
        comfy_url, comfy_proc = start_test_comfyui(procs)
        comfy_pid = comfy_proc.pid
        comfy_kind = "testserver"
    stats = httpx.get(f"{comfy_url}/system_stats", timeout=30).json()
    comfy_version = (stats.get("system") or {}).get("comfyui_version")
    config = f"{args.config}-{comfy_kind}"
    machine = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavgAtStart": os.getloadavg(),
    }
    print(f"peer bench — {config}: PODI on {args.config}, ComfyUI {comfy_version} at {comfy_url}; "
          f"nproc={machine['nproc']}, load {machine['loadavgAtStart'][0]:.2f}")  # fmt: skip

    call_command("migrate", verbosity=0)
    setup_fixtures(comfy_url, args.max_concurrency)
    connections.close_all()
    sql_dir = work / "sql"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    podi_env = {**env, "PUBLIC_BASE_URL": base, "PODI_SQL_COUNT_DIR": str(sql_dir)}
    podi = procs.start(
        "podi", [PYTHON, "manage.py", "up", "--host", "127.0.0.1", "--port", str(port)], podi_env
    )
    wait_http(podi, base, "podi", procs)
    mode = f"manage.py up (WORKER_THREADS={args.worker_threads}) on {args.config}"
    progress(f"PODI up at {base} ({mode}) in {time.monotonic() - began:.1f} s")
    token = login(base)
    meter = Meter(podi.pid, SqlCounts(sql_dir), comfy_pid)
    sampler = None
    if args.config == "postgres":
        sampler = ConnectionSampler(args.admin_url, env["DATABASE_URL"].rsplit("/", 1)[-1])
    limit = max(args.burst, 16)

    async def phases() -> dict:
        direct = DirectClient(comfy_url, limit)
        client = PodiClient(base, token, limit)
        client.event_timeout = args.event_timeout
        try:
            await direct.open()
            await client.open()
            progress("warm-up: 3 jobs each way")
            for index in range(3):
                await direct.job(f"warm{index}")
                await client.job(f"warm{index}")
            await asyncio.sleep(1.0)
            idle_before = meter.mark(settle=True)
            await asyncio.sleep(args.idle_seconds)
            idle_after = meter.mark()
            idle_window = idle_after["t"] - idle_before["t"]
            idle_rate = (idle_after["cpu"] - idle_before["cpu"]) / idle_window
            idle = {
                "seconds": round(idle_window, 2),
                "podiCpuPercent": round(idle_rate * 100, 2),
                "sql": SqlCounts.delta(idle_after["sql"], idle_before["sql"]),
            }
            progress(f"idle: PODI uses {idle_rate * 100:.1f} % of a core; sequential {args.jobs} "
                     "jobs each way, interleaved")  # fmt: skip
            sequential = await run_sequential(direct, client, args.jobs, meter, idle_rate)
            progress(f"burst: {args.burst} jobs at once, {args.burst_rounds} rounds each way")
            burst = await run_burst(direct, client, args.burst, args.burst_rounds, meter, idle_rate)
            return {"idle": idle, "sequential": sequential, "burst": burst,
                    "submitRetries": client.retried,
                    "eventsMissed": client.events_missed,
                    "taskReadsForUrls": client.detail_reads,
                    "streamReconnects": client.reconnects,
                    "streamFrames": client.frames,
                    "streamReaderEnded": (
                        repr(client.reader.exception())
                        if client.reader.done() and not client.reader.cancelled()
                        else None
                    ),
                    "streamLastSeq": client.last_seq,
                    "directHistoryRetries": direct.history_retries}  # fmt: skip
        finally:
            await direct.close()
            await client.close()

    with no_collector_pauses():
        result = asyncio.run(phases())
    seq, burst = result["sequential"], result["burst"]
    all_podi = seq["podi"] + [r for b in burst["podi"] for r in b["runs"]]
    latency_seq = comfy_to_event(seq["podi"], seq["direct"], comfy_url)
    latency_burst = comfy_to_event(
        [r for b in burst["podi"] for r in b["runs"]],
        [r for b in burst["direct"] for r in b["runs"]],
        comfy_url,
    )
    state = end_state([r["taskId"] for r in all_podi])
    pg_connections = sampler.result() if sampler else None
    server_errors = {n: procs.error_summary(n) for n, _ in procs.started}
    error_lines = error_messages(procs.log_dir / "podi.log")
    for entry in burst["podi"]:
        entry["tasksWallSeconds"] = tasks_wall([r["taskId"] for r in entry["runs"]],
                                               entry["startedAt"])  # fmt: skip
    p_task_walls = [b["tasksWallSeconds"] for b in burst["podi"]]

    d_seq = summary([r["seconds"] for r in seq["direct"]])
    p_seq = summary([r["seconds"] for r in seq["podi"]])
    p_submit = summary([r["submitSeconds"] for r in seq["podi"]])
    d_walls = [b["wallSeconds"] for b in burst["direct"]]
    p_walls = [b["wallSeconds"] for b in burst["podi"]]
    d_wall, p_wall = statistics.median(d_walls), statistics.median(p_walls)
    seq_meter = seq["meter"]
    burst_meters = [b["meter"] for b in burst["podi"]]
    burst_cpu = round(statistics.median(m["podiCpuMsPerTask"] for m in burst_meters), 2)
    burst_sql = round(
        statistics.median(m["sql"]["submitToTerminalPerTask"] for m in burst_meters), 2
    )
    figures = {
        "seqP50Ratio": ratio(p_seq["p50"], d_seq["p50"]),
        "burstWallRatio": ratio(p_wall, d_wall),
        "succeededAfterComfyP95Ms": (latency_seq["podiSucceededEventMs"] or {}).get("p95"),
        "sqlPerTask": seq_meter["sql"]["submitToTerminalPerTask"],
        "sqlSubmitPerTask": seq_meter["sql"]["submitPerTask"],
        "cpuMsPerTask": seq_meter["podiCpuMsPerTask"],
    }
    for phase in (seq,):
        strip_runs_seq(phase)
    for key in ("direct", "podi"):
        for entry in burst[key]:
            entry["jobSeconds"] = [round(r["seconds"], 4) for r in entry.pop("runs")]

    # --- the table ----------------------------------------------------------------------------
    rows = [
        ("50 sequential jobs, p50 per job" if args.jobs == 50 else f"{args.jobs} sequential, p50",
         f"direct {d_seq['p50']} ms", f"PODI {p_seq['p50']} ms", "seqP50Ratio", "×"),
        ("  p95 per job", f"direct {d_seq['p95']} ms", f"PODI {p_seq['p95']} ms", None, ""),
        ("  PODI submit (HTTP 202), p50/p95", f"{p_submit['p50']} / {p_submit['p95']} ms", "",
         None, ""),
        (f"{args.burst} jobs at once, wall (median of {args.burst_rounds})", f"direct {d_wall:.3f} s",
         f"PODI {p_wall:.3f} s", "burstWallRatio", "×"),
        ("  same, to the last task's finished_at (server)", "",
         f"PODI {statistics.median(w for w in p_task_walls if w is not None) if any(p_task_walls) else None} s",
         None, ""),
        ("succeeded after ComfyUI's success, p50/p95",
         f"direct ws {(latency_seq['directSocketMs'] or {}).get('p50')} / "
         f"{(latency_seq['directSocketMs'] or {}).get('p95')} ms",
         f"PODI {(latency_seq['podiSucceededEventMs'] or {}).get('p50')} / "
         f"{(latency_seq['podiSucceededEventMs'] or {}).get('p95')} ms",
         "succeededAfterComfyP95Ms", " ms"),
        ("  same, in the bursts (p50/p95)", "",
         f"PODI {(latency_burst['podiSucceededEventMs'] or {}).get('p50')} / "
         f"{(latency_burst['podiSucceededEventMs'] or {}).get('p95')} ms", None, ""),
        ("SQL statements per task, submit→terminal", f"seq {seq_meter['sql']['submitToTerminalPerTask']}",
         f"burst {burst_sql}", "sqlPerTask", ""),
        ("  of which submit", f"seq {seq_meter['sql']['submitPerTask']}",
         f"burst {statistics.median(m['sql']['submitPerTask'] for m in burst_meters)}",
         "sqlSubmitPerTask", ""),
        ("  + client reads (GET task, download)", f"seq {seq_meter['sql']['clientReadsPerTask']}",
         "", None, ""),
        ("PODI CPU per task (web+worker)", f"seq {seq_meter['podiCpuMsPerTask']} ms",
         f"burst {burst_cpu} ms", "cpuMsPerTask", " ms"),
        ("  net of idle background", f"seq {seq_meter['podiCpuMsPerTaskNetOfIdle']} ms",
         f"idle {result['idle']['podiCpuPercent']} % of a core", None, ""),
        ("  by role (ms per task)", _roles(seq_meter), _roles(burst_meters[0]), None, ""),
    ]  # fmt: skip
    print()
    print(f"  {'what':<44} {'direct / figure':<26} {'PODI / detail':<26} {'PODI/direct':<12} "
          f"{'today (#13)':<12} target")  # fmt: skip
    verdicts = {}
    targets = dict(TARGETS)
    if args.config == "postgres":
        targets["seqP50Ratio"] = ("23–35×", 2.0)
        targets["burstWallRatio"] = ("18–40×", 1.5)
    else:
        targets["burstWallRatio"] = ("7–10×", 3.0)
    for what, left, right, key, unit in rows:
        figure, today, target, verdict = "", "", "", ""
        if key:
            value = figures[key]
            today, limit_value = targets[key]
            figure = f"{value}{unit}" if value is not None else "—"
            target = f"≤ {limit_value:g}{unit}"
            met = value is not None and value <= limit_value
            verdicts[key] = {"value": value, "today": today, "target": limit_value, "met": met}
            verdict = "MET" if met else "MISSED"
        print(f"  {what:<44} {left:<26} {right:<26} {figure:<12} {today:<12} {target} {verdict}")
    print(f"  end state: PODI tasks {state['byStatus']}, attempts {state['attempts']}; "
          f"submit retries {result['submitRetries'] or 'none'}; task reads for output URLs "
          f"{result.get('taskReadsForUrls', 0)}; terminal events missed by "
          f"the stream (read from the task after {args.event_timeout:g} s): "
          f"{len(result['eventsMissed'])}; stream reconnects (?after=): "
          f"{result['streamReconnects'] or 'none'}; stream frames {result['streamFrames']}, "
          f"last seq {result['streamLastSeq']}, reader ended: {result['streamReaderEnded']}")  # fmt: skip
    if pg_connections:
        print(f"  PostgreSQL connections to PODI's database: peak {pg_connections['peak']}, mean "
              f"{pg_connections['mean']} (max_connections {pg_connections['maxConnections']}, "
              "shared with the other databases on the server)")  # fmt: skip
    top = list(seq_meter["sql"]["byLabel"].items())[:6]
    print("  SQL by origin (sequential, per task): " + ", ".join(
        f"{label} {v['total'] / args.jobs:.1f}" for label, v in top))  # fmt: skip
    for name, found in server_errors.items():
        if found:
            print(f"  server errors logged by {name}: {json.dumps(found, ensure_ascii=False)}")
    if error_lines:
        print(f"  PODI's error messages: {json.dumps(error_lines, ensure_ascii=False)}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"peer-{config}" + (f"-{args.tag}" if args.tag else "") + f"-{stamp}.json"
    out = RESULTS / name
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=ROOT).stdout.strip()  # fmt: skip
    body = {
        "bench": "peer: the same jobs straight to ComfyUI and through PODI (issue #13)",
        "at": stamp,
        "commit": git,
        "config": config,
        "podi": {"mode": mode, "maxConcurrency": args.max_concurrency,
                 "workerThreads": args.worker_threads, "extraEnv": args.env},  # fmt: skip
        "comfyui": {"url": comfy_url, "kind": comfy_kind, "version": comfy_version},
        "machine": {**machine, "loadavgAtEnd": os.getloadavg()},
        "job": "EmptyImage 64x64 → ImageInvert → SaveImage, filename_prefix unique per job",
        "settings": {"jobs": args.jobs, "burst": args.burst, "burstRounds": args.burst_rounds},
        "figures": figures,
        "targets": verdicts,
        "sequential": {
            "directMs": d_seq, "podiMs": p_seq, "podiSubmitMs": p_submit,
            "directJobSeconds": seq["direct"], "podiJobSeconds": seq["podi"],
            "meter": seq_meter,
        },
        "burst": {"directWallSeconds": d_walls, "podiWallSeconds": p_walls,
                  "podiTasksWallSeconds": p_task_walls, **burst},
        "comfyDoneToClient": {"sequential": latency_seq, "burst": latency_burst},
        "idle": result["idle"],
        "endState": state,
        "postgresConnections": pg_connections,
        "submitRetries": result["submitRetries"],
        "terminalEventsMissed": result["eventsMissed"],
        "streamReconnects": result["streamReconnects"],
        "streamFrames": result["streamFrames"],
        "streamReaderEnded": result["streamReaderEnded"],
        "streamLastSeq": result["streamLastSeq"],
        "directHistoryRetries": result["directHistoryRetries"],
        "serverErrors": server_errors,
        "serverErrorMessages": error_lines,
        "runtimeSeconds": round(time.monotonic() - began, 1),
    }  # fmt: skip
    out.write_text(json.dumps(body, indent=2, default=str))
    print(f"  written: {out.relative_to(ROOT)}  (ran {time.monotonic() - began:.0f} s)")
    ok = state["byStatus"].get("succeeded", 0) == len(all_podi) and not result["eventsMissed"]
    return 0 if ok else 1


def strip_runs_seq(phase: dict) -> None:
    for key in ("direct", "podi"):
        phase[key] = [round(r["seconds"], 4) for r in phase[key]]


if __name__ == "__main__":
    sys.exit(main())
