#!/usr/bin/env python
"""WebSocket fan-out benchmark (README "Fan-out benchmark"): 1,000 subscribers, latency from commit to receipt.

Production layout on one machine: PostgreSQL + Redis, the web tier separate Daphne processes
(``--web-processes``, sharing one listening socket as ``manage.py up`` does) serving
``podi.asgi:application``, this process the "worker" that commits events (``emit`` inside
``transaction.atomic``), and the subscribers real WebSocket clients spread over a few client
processes. Latency is measured per receipt: the client's clock when the frame arrives minus the
clock right after the event's transaction committed (the first on-commit callback).

Two phases:

1. targeted — every subscriber is a different user; events for random users at ``--rate`` per
   second for ``--seconds``: each event reaches exactly one socket (the everyday case);
2. broadcast — every subscriber subscribes to everything (staff ``all``); ``--broadcast`` events,
   each reaching all 1,000 sockets (the worst case for one web process).

Target: p99 ≤ 100 ms (docs/adr/0006-live-events.md). The script creates its own database and Redis prefix, drops
them at the end, raises ``ulimit -n`` for itself and its children, bounds its runtime
(``--deadline``), prints the figures and writes them as JSON to ``bench/results/``.

    .venv/bin/python bench/ws_fanout.py [--subscribers 1000] [--rate 100] [--seconds 10]
        [--broadcast 20] [--client-procs 4] [--web-processes <cores>] [--layer configured|pubsub]
        [--admin-url postgres://postgres@127.0.0.1:5432/postgres] [--redis-url redis://…]

``--layer pubsub`` runs the same code on channels_redis's pub/sub layer instead of the configured
one (a settings module written into the run's temporary directory). ``BENCH_DUMP=file.json``
keeps the raw targeted latencies (commit time, ms) to look for clustered tails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from steady import no_collector_pauses

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_P99_MS = 100.0
CONTROL = {"hello", "pong", "heartbeat", "subscribed", "resumed", "error"}
PUBSUB_SETTINGS = """\
from podi.settings import *  # noqa: F403
from podi.settings import REDIS_PREFIX, REDIS_URL

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_PREFIX}:asgi"},
    }
}
"""


# --- plumbing ---------------------------------------------------------------------------------


def default_admin_url() -> str:
    url = os.environ.get("BENCH_PG_ADMIN_URL") or os.environ.get("DATABASE_URL") or ""
    if not url.startswith(("postgres://", "postgresql://")):
        return "postgres://postgres@127.0.0.1:5432/postgres"
    return urlunsplit(urlsplit(url)._replace(path="/postgres", query=""))


def admin_execute(admin_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("daphne did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarise(latencies_ms: list[float], expected: int) -> dict:
    values = sorted(latencies_ms)
    if not values:
        return {"expected": expected, "received": 0}
    return {
        "expected": expected,
        "received": len(values),
        "p50_ms": round(percentile(values, 0.50), 2),
        "p90_ms": round(percentile(values, 0.90), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(values[-1], 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


# --- subscribers (child processes) ------------------------------------------------------------


def client_process(port: int, tokens: list[str], pipe) -> None:
    with no_collector_pauses():  # the subscribers' pauses are not PODI's
        asyncio.run(_clients(port, tokens, pipe))


async def _clients(port: int, tokens: list[str], pipe) -> None:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    receipts: list[tuple[str, float]] = []
    url = f"ws://127.0.0.1:{port}/api/notify/v1/stream"

    async def open_one(token: str):
        ws = await connect(f"{url}?token={token}", open_timeout=60, max_queue=None)
        hello = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert hello["type"] == "hello", hello
        return ws

    sockets = []
    for start in range(0, len(tokens), 50):  # under the server's listen backlog
        sockets += await asyncio.gather(*(open_one(t) for t in tokens[start : start + 50]))

    async def read(ws) -> None:
        try:
            async for raw in ws:
                at = time.time()
                message = json.loads(raw)
                if message.get("type") not in CONTROL:
                    receipts.append((message["id"], at))
        except Exception:  # noqa: S110 - a closed socket ends its reader
            pass

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    pipe.send(("ready", len(sockets)))
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command == "subscribe_all":
            for ws in sockets:
                await ws.send(json.dumps({"action": "subscribe", "all": True}))
            pipe.send(("subscribed", len(sockets)))
        elif command == "receipts":
            pipe.send(("receipts", list(receipts)))
            receipts.clear()
        elif command == "stop":
            break
    for ws in sockets:
        await ws.close()
    for reader in readers:
        reader.cancel()
    pipe.send(("stopped", 0))


# --- the run ----------------------------------------------------------------------------------


def emit_timed(user_id: int, n: int, commit_times: dict[str, float]) -> None:
    from django.db import transaction

    from podi.realtime.events import emit

    marker: dict[str, float] = {}
    with transaction.atomic():
        transaction.on_commit(lambda: marker.setdefault("at", time.time()))  # runs first
        event = emit(user_id=user_id, type="task.progress", payload={"n": n, "progress": n % 100})
    commit_times[event["id"]] = marker["at"]


def collect(pipes, timeout: float = 30.0) -> list[tuple[str, float]]:
    receipts = []
    for pipe in pipes:
        pipe.send("receipts")
    for pipe in pipes:
        if not pipe.poll(timeout):
            raise TimeoutError("a client process did not answer")
        kind, rows = pipe.recv()
        assert kind == "receipts"
        receipts += rows
    return receipts


def drain(pipes, expected: int, commit_times: dict, settle: float, timeout: float) -> list:
    """Receipts until ``expected`` arrived (or ``timeout``), then ``settle`` more seconds."""
    got: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += collect(pipes)
        if len(got) >= expected:
            break
        time.sleep(0.5)
    time.sleep(settle)
    got += collect(pipes)
    return [(eid, at) for eid, at in got if eid in commit_times]


class Webs:
    """The web processes, measured together: CPU summed, RSS of the largest."""

    def __init__(self, processes: list[subprocess.Popen]):
        self.processes = processes

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def rss_bytes(self) -> int:
        return max(rss_bytes(p.pid) for p in self.processes)

    def terminate(self) -> None:
        for process in self.processes:
            process.terminate()

    def wait(self, timeout: float) -> None:
        for process in self.processes:
            process.wait(timeout)

    def kill(self) -> None:
        for process in self.processes:
            process.kill()


def run(args, env: dict, url: str) -> dict:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework_simplejwt.tokens import AccessToken

    call_command("migrate", verbosity=0)
    User = get_user_model()
    count = args.subscribers
    users = User.objects.bulk_create(
        [User(username=f"sub{i}", is_staff=True, is_active=True) for i in range(count)]
    )
    source = User.objects.create(username="bench-source", is_active=True)
    tokens = [str(AccessToken.for_user(u)) for u in users]

    log_path = Path(env["PODI_DATA_DIR"]) / "web.log"
    # One listening socket shared by every web process, as ``manage.py up`` serves it
    # (WEB_CONCURRENCY): the kernel hands each new connection to one of them.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    with open(log_path, "w") as log:
        webs = [
            subprocess.Popen(
                [sys.executable, "-m", "daphne", "-v", "0", "--fd", str(fd)]
                + ["podi.asgi:application"],
                cwd=ROOT,
                env={**env, "DATABASE_CONN_MAX_AGE": "60"},
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
            )
            for _ in range(args.web_processes)
        ]
    web = Webs(webs)
    context = mp.get_context("spawn")
    processes, pipes = [], []
    try:
        for each in webs:
            wait_for_port(port, each)
        started = time.monotonic()
        share = [tokens[i :: args.client_procs] for i in range(args.client_procs)]
        for part in share:
            ours, theirs = context.Pipe()
            process = context.Process(target=client_process, args=(port, part, theirs))
            process.start()
            processes.append(process)
            pipes.append(ours)
        connected = 0
        for pipe in pipes:
            if not pipe.poll(180):
                raise TimeoutError("subscribers did not connect")
            kind, n = pipe.recv()
            assert kind == "ready"
            connected += n
        connect_seconds = time.monotonic() - started
        print(f"{connected} subscribers connected in {connect_seconds:.1f} s")
        time.sleep(1)
        cpu_before, idle_began = web.cpu_seconds(), time.monotonic()
        time.sleep(args.idle)
        idle = {
            "seconds": args.idle,
            "webCpuPercent": round(
                100 * (web.cpu_seconds() - cpu_before) / (time.monotonic() - idle_began), 1
            ),
            "webRssMb": round(web.rss_bytes() / 2**20, 1),
        }
        print(f"idle with {connected} sockets: {json.dumps(idle)}")

        # Phase 1: targeted.
        commit_times: dict[str, float] = {}
        total = args.rate * args.seconds
        interval = 1.0 / args.rate
        random.seed(7)
        cpu_before = web.cpu_seconds()
        began = time.monotonic()
        for n in range(total):
            emit_timed(random.choice(users).pk, n, commit_times)
            pause = began + (n + 1) * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        emit_seconds = time.monotonic() - began
        receipts = drain(pipes, total, commit_times, settle=1.0, timeout=30)
        cpu = web.cpu_seconds() - cpu_before
        targeted = summarise([(at - commit_times[eid]) * 1000 for eid, at in receipts], total)
        if os.environ.get("BENCH_DUMP"):
            rows = sorted(
                (commit_times[eid], (at - commit_times[eid]) * 1000) for eid, at in receipts
            )
            Path(os.environ["BENCH_DUMP"]).write_text(json.dumps(rows))
        targeted["webCpuUsPerDelivery"] = round(cpu * 1e6 / max(len(receipts), 1), 1)
        targeted["eventsPerSecond"] = round(total / emit_seconds, 1)
        print(f"targeted: {json.dumps(targeted)}")

        # Phase 2: broadcast to every socket.
        for pipe in pipes:
            pipe.send("subscribe_all")
        for pipe in pipes:
            if not pipe.poll(60):
                raise TimeoutError("subscribe_all not acknowledged")
            pipe.recv()
        time.sleep(2)
        collect(pipes)
        commit_times = {}
        cpu_before = web.cpu_seconds()
        for n in range(args.broadcast):
            emit_timed(source.pk, n, commit_times)
            time.sleep(args.broadcast_gap)
        expected = args.broadcast * connected
        receipts = drain(pipes, expected, commit_times, settle=1.0, timeout=60)
        cpu = web.cpu_seconds() - cpu_before
        broadcast = summarise([(at - commit_times[eid]) * 1000 for eid, at in receipts], expected)
        broadcast["webCpuUsPerDelivery"] = round(cpu * 1e6 / max(len(receipts), 1), 1)
        broadcast["events"] = args.broadcast
        # Per event, in emit order: the slowest socket's latency (a tail is one slow event or many).
        slowest: dict[str, float] = {}
        for eid, at in receipts:
            slowest[eid] = max(slowest.get(eid, 0.0), (at - commit_times[eid]) * 1000)
        broadcast["maxMsPerEvent"] = [
            round(slowest.get(eid, float("nan")), 1)
            for eid in sorted(commit_times, key=commit_times.get)
        ]
        print(f"broadcast: {json.dumps(broadcast)}")
        from django.conf import settings
        from django.db import connection

        return {
            "postgres": connection.pg_version,
            "channelLayer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
            "connected": connected,
            "connectSeconds": round(connect_seconds, 1),
            "idle": idle,
            "targeted": targeted,
            "broadcast": broadcast,
        }
    finally:
        for pipe in pipes:
            try:
                pipe.send("stop")
            except (BrokenPipeError, OSError):
                pass
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
        web.terminate()
        try:
            web.wait(10)
        except subprocess.TimeoutExpired:
            web.kill()
        from django.db import connections

        connections.close_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=100, help="targeted events per second")
    parser.add_argument("--seconds", type=int, default=10, help="length of the targeted phase")
    parser.add_argument("--broadcast", type=int, default=20, help="events sent to every socket")
    parser.add_argument("--broadcast-gap", type=float, default=0.5, help="seconds between them")
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument(
        "--web-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="Daphne processes sharing the port; default the number of cores, as manage.py up "
        "runs (WEB_CONCURRENCY)",
    )
    parser.add_argument("--idle", type=float, default=5, help="seconds of idle CPU measurement")
    parser.add_argument(
        "--layer",
        choices=("configured", "pubsub"),
        default="configured",
        help="the channel layer: as settings configure it, or channels_redis's pub/sub layer",
    )
    parser.add_argument("--deadline", type=int, default=600, help="abort after this many s")
    parser.add_argument("--admin-url", default=default_admin_url(), help="a PostgreSQL URL")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    args = parser.parse_args()

    def abort(*_):
        raise TimeoutError(f"the benchmark ran past --deadline {args.deadline} s")

    signal.signal(signal.SIGALRM, abort)
    signal.alarm(args.deadline)
    nofile = raise_nofile(4 * args.subscribers + 1024)

    name = f"podi_bench_ws_{os.getpid()}_{secrets.token_hex(3)}"
    url = urlunsplit(urlsplit(args.admin_url)._replace(path=f"/{name}"))
    admin_execute(args.admin_url, f'CREATE DATABASE "{name}"')
    data_dir = tempfile.mkdtemp(prefix="podi-bench-ws-")
    prefix = f"podi-bench-ws-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k not in {"BROKER_URL", "DATABASE_URL"}}
    env.update(
        DATABASE_URL=url,
        REDIS_URL=args.redis_url,
        REDIS_PREFIX=prefix,
        PODI_DATA_DIR=data_dir,
        SECRET_KEY=secrets.token_urlsafe(50),
        LOG_LEVEL="warning",
        DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "podi.settings"),
    )
    if args.layer == "pubsub":
        # A settings module of our own: podi.settings with the pub/sub Redis layer.
        Path(data_dir, "bench_ws_settings.py").write_text(PUBSUB_SETTINGS)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [data_dir, env.get("PYTHONPATH")]))
        env["DJANGO_SETTINGS_MODULE"] = "bench_ws_settings"
        sys.path.insert(0, data_dir)
    os.environ.clear()
    os.environ.update(env)
    try:
        figures = run(args, env, url)
    finally:
        admin_execute(args.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(data_dir, ignore_errors=True)
        import redis

        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    signal.alarm(0)

    result = {
        "bench": "ws_fanout",
        "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgres": figures.pop("postgres"),
            "nofile": nofile,
        },
        "config": {
            "subscribers": args.subscribers,
            "rate": args.rate,
            "seconds": args.seconds,
            "broadcast": args.broadcast,
            "clientProcesses": args.client_procs,
            "webProcesses": args.web_processes,
            "channelLayer": figures.pop("channelLayer"),
        },
        "target": {"p99_ms": TARGET_P99_MS},
        **figures,
    }
    for phase in ("targeted", "broadcast"):
        p99 = figures[phase].get("p99_ms")
        result[phase]["meetsTarget"] = (
            p99 is not None
            and p99 <= TARGET_P99_MS
            and (figures[phase]["received"] == figures[phase]["expected"])
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"ws_fanout-web{args.web_processes}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"{'phase':<10} {'received':>17} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  target p99")
    for phase in ("targeted", "broadcast"):
        row = result[phase]
        print(
            f"{phase:<10} {row['received']:>8}/{row['expected']:<8} {row.get('p50_ms', '-'):>8} "
            f"{row.get('p99_ms', '-'):>8} {row.get('max_ms', '-'):>8}  ≤ {TARGET_P99_MS:.0f} "
            f"{'ok' if row['meetsTarget'] else 'MISSED'}"
        )
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
