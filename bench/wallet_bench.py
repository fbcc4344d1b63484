#!/usr/bin/env python
"""Wallet benchmark (README "Wallet"): freeze+confirm pairs per second on ONE hot account, 16 clients.

Phases of ``--seconds`` each (default 10), in one run on one machine:

1. reference — pgbench with a hot-row script (``UPDATE`` one row + ``INSERT`` a log row per
   transaction, 16 clients); without pgbench, the same loop from 16 psycopg threads;
2. services — ``hold_freeze`` + ``hold_confirm`` called directly by 16 client processes, with
   the app as configured (the realtime layer persists every ``wallet.points`` event);
3. diagnostic (no target) — the same with the event recorder off: the wallet's own cost;
4. HTTP — ``POST freeze`` + ``POST confirm`` by 16 concurrent httpx clients against a real
   Daphne process serving ``podi.asgi:application`` (authenticated with a wallet:write key),
   configured as in production: its own connection pool, and Redis (``--redis-url``) for the
   cache and rate limits (before session 10 it ran without either: a new PostgreSQL
   connection per request);
5. the reference again; ratios use the mean of both reference runs (the machine is shared).

Targets: services ≥ 25 % and HTTP ≥ 10 % of the reference tps; the wallet invariants must hold
after every phase (checked by replaying the ledger). The script creates its own PostgreSQL database and drops it at the end, prints the
figures side by side and writes them as JSON to ``bench/results/``.

    .venv/bin/python bench/wallet_bench.py [--seconds 10] [--clients 16]
        [--admin-url postgres://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
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
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGETS = {"services": 0.25, "http": 0.10}
POINTS = 1

HOT_ROW_SQL = """\
BEGIN;
UPDATE bench_hot SET balance = balance + 1 WHERE id = 1;
INSERT INTO bench_hot_log (delta) VALUES (1);
END;
"""


# --- database lifecycle ---------------------------------------------------------------------


def default_admin_url() -> str:
    url = os.environ.get("BENCH_PG_ADMIN_URL") or os.environ.get("DATABASE_URL") or ""
    if not url.startswith(("postgres://", "postgresql://")):
        return "postgres://postgres@127.0.0.1:5432/postgres"
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres", query=""))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin_execute(admin_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def pg_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


# --- phase 1: the hot-row reference ---------------------------------------------------------


def reference_setup(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_hot (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute("INSERT INTO bench_hot VALUES (1, 0)")
        conn.execute(
            "CREATE TABLE bench_hot_log (id bigserial PRIMARY KEY, delta int NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())"
        )


def reference_pgbench(url: str, clients: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(HOT_ROW_SQL)
    try:
        jobs = str(min(clients, os.cpu_count() or 1))
        command = ["pgbench", "-n", "-c", str(clients), "-j", jobs, "-T", str(seconds)]
        run = subprocess.run(
            [*command, "-f", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        if run.returncode != 0:
            raise RuntimeError(f"pgbench failed: {run.stderr.strip()[-2000:]}")
        out = run.stdout
    finally:
        os.unlink(script.name)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    return {
        "tool": "pgbench",
        "script": HOT_ROW_SQL,
        "tps": float(match.group(1)),
        "latencyAvgMs": float(latency.group(1)) if latency else None,
    }


def reference_psycopg(url: str, clients: int, seconds: int) -> dict:
    """The same hot-row transaction from ``clients`` threads (when pgbench is not installed)."""
    import psycopg

    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = [float("inf")]  # set once every client is connected

    def client(index: int) -> None:
        with psycopg.connect(url) as conn:
            start.wait()
            while time.monotonic() < stop[0]:
                with conn.transaction():
                    conn.execute("UPDATE bench_hot SET balance = balance + 1 WHERE id = 1")
                    conn.execute("INSERT INTO bench_hot_log (delta) VALUES (1)")
                counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop[0] = time.monotonic() + seconds + 30  # a safety net while connecting
    start.wait()
    stop[0] = time.monotonic() + seconds
    for thread in threads:
        thread.join()
    return {"tool": "psycopg threads (pgbench not installed)", "tps": sum(counts) / seconds}


# --- phase 2: services, from client processes -----------------------------------------------


def _services_client(user_id, seconds, ready, go, results, index, record_events):
    from django.contrib.auth import get_user_model
    from django.db import connections

    from podi.realtime.events import set_recorder
    from wallet.services import hold_confirm, hold_freeze

    connections.close_all()  # never share the parent's socket
    if not record_events:
        set_recorder(None)  # diagnostic phase: the wallet's own cost, events published unpersisted
    user = get_user_model().objects.get(pk=user_id)
    for n in range(10):  # warm up: connect, fill caches
        hold, _ = hold_freeze(user=user, task_id=f"warm{index}_{n}", points=POINTS)
        hold_confirm(hold=hold)
    backend = _backend_pid()
    ready.release()
    go.wait()
    deadline = time.monotonic() + seconds
    latencies, pairs = [], 0
    cpu, server_cpu = time.process_time(), _process_cpu(backend)
    while time.monotonic() < deadline:
        began = time.perf_counter()
        hold, created = hold_freeze(user=user, task_id=f"s{pairs}_{index}", points=POINTS)
        hold_confirm(hold=hold)
        latencies.append(time.perf_counter() - began)
        pairs += 1
    cpu, server_cpu = time.process_time() - cpu, _process_cpu(backend) - server_cpu
    connections.close_all()
    results.put({"pairs": pairs, "latencies": latencies, "cpu": cpu, "serverCpu": server_cpu})


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` on this machine; NaN when unreadable (a
    PostgreSQL server elsewhere): the cost per pair that machine noise does not blur."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase_services(user_id: int, clients: int, seconds: int, *, record_events: bool) -> dict:
    from django.db import connections

    connections.close_all()
    ctx = mp.get_context("fork")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_services_client,
            args=(user_id, seconds, ready, go, results, i, record_events),
        )
        for i in range(clients)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a services client did not start")
    began = time.monotonic()
    go.set()
    outputs = [results.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.monotonic() - began
    for proc in procs:
        proc.join(timeout=30)
    return summarise(outputs, elapsed, clients=f"{clients} processes")


# --- phase 3: HTTP against a real Daphne ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict, port: int) -> subprocess.Popen:
    daphne = shutil.which("daphne", path=str(Path(sys.executable).parent)) or "daphne"
    server = subprocess.Popen(
        [daphne, "-b", "127.0.0.1", "-p", str(port), "podi.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"daphne exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503):
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("daphne did not answer /health within 60 s")


async def _http_clients(base: str, key: str, user_id: int, clients: int, seconds: int) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as http:

        async def pair(task_id: str) -> None:
            body = {"userId": user_id, "taskId": task_id, "points": POINTS}
            frozen = await http.post("freeze", json=body)
            if frozen.status_code != 201:
                raise RuntimeError(f"freeze: {frozen.status_code} {frozen.text[:300]}")
            confirmed = await http.post("confirm", json={"holdId": frozen.json()["holdId"]})
            if confirmed.status_code != 200:
                raise RuntimeError(f"confirm: {confirmed.status_code} {confirmed.text[:300]}")

        await asyncio.gather(*(pair(f"warm_h{i}") for i in range(clients)))

        async def client(index: int, deadline: float) -> dict:
            latencies, pairs = [], 0
            while time.monotonic() < deadline:
                began = time.perf_counter()
                await pair(f"h{index}_{pairs}")
                latencies.append(time.perf_counter() - began)
                pairs += 1
            return {"pairs": pairs, "latencies": latencies}

        began = time.monotonic()
        outputs = await asyncio.gather(*(client(i, began + seconds) for i in range(clients)))
        elapsed = time.monotonic() - began
    return summarise(outputs, elapsed, clients=f"{clients} httpx connections (asyncio)")


def phase_http(env: dict, key: str, user_id: int, clients: int, seconds: int) -> dict:
    port = free_port()
    server = start_server(env, port)
    try:
        base = f"http://127.0.0.1:{port}/api/wallet/v1/"
        result = asyncio.run(_http_clients(base, key, user_id, clients, seconds))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    result["server"] = "daphne podi.asgi:application (1 process)"
    return result


# --- figures --------------------------------------------------------------------------------


def summarise(outputs: list[dict], elapsed: float, *, clients: str) -> dict:
    latencies = sorted(x for out in outputs for x in out["latencies"])
    pairs = sum(out["pairs"] for out in outputs)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    figures = {
        "clients": clients,
        "pairs": pairs,
        "seconds": round(elapsed, 2),
        "pairsPerSecond": round(pairs / elapsed, 1),
        "latencyMs": {
            "p50": pct(0.50),
            "p99": pct(0.99),
            "mean": round(statistics.fmean(latencies) * 1000, 2),
        }
        if latencies
        else None,
    }
    if pairs and all("cpu" in out for out in outputs):
        # Process CPU per pair: the clients' own, and their PostgreSQL backends'.
        figures["cpuMsPerPair"] = {
            "clients": round(sum(out["cpu"] for out in outputs) / pairs * 1000, 3),
            "postgres": round(sum(out["serverCpu"] for out in outputs) / pairs * 1000, 3),
        }
    return figures


def check_invariants(user) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.wallet.invariants import assert_wallet_invariants
    from wallet.models import Hold, LedgerEntry

    account = assert_wallet_invariants(user)
    return {
        "ok": True,
        "balance": account.balance,
        "frozen": account.frozen,
        "holds": Hold.objects.filter(account=account).count(),
        "entries": LedgerEntry.objects.filter(account=account).count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--admin-url", default=default_admin_url(), help="a PostgreSQL URL")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="Redis for the HTTP phase's server (cache and rate limits), as in production",
    )
    parser.add_argument(
        "--skip-diagnostic", action="store_true", help="skip the services phase without events"
    )
    args = parser.parse_args()

    name = f"podi_bench_wallet_{os.getpid()}_{secrets.token_hex(3)}"
    url = with_database(args.admin_url, name)
    admin_execute(args.admin_url, f'CREATE DATABASE "{name}"')
    data_dir = tempfile.mkdtemp(prefix="podi-bench-")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "BROKER_URL", "DATABASE_URL", "PODI_DATA_DIR"}
    }
    env.update(
        DATABASE_URL=url,
        PODI_DATA_DIR=data_dir,
        RATE_LIMIT="1000000/s",  # the throttle keeps one window of timestamps: keep it short
        LOG_LEVEL="warning",
        DJANGO_SETTINGS_MODULE="podi.settings",
        # The client processes are forked from this one: each opens a connection of its own,
        # which an inherited connection pool would hand out to several of them at once.
        DATABASE_POOL="false",
    )
    os.environ.clear()
    os.environ.update(env)
    try:
        return run(args, url, env)
    finally:
        from django.db import connections

        connections.close_all()
        admin_execute(args.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(data_dir, ignore_errors=True)


def run(args, url: str, env: dict) -> int:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from podi.services import service_key_create
    from wallet.services import wallet_grant

    call_command("migrate", verbosity=0)
    clients, seconds = args.clients, args.seconds
    machine = {
        "nproc": os.cpu_count(),
        "postgres": pg_version(url),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    print(f"wallet bench: one hot account, {clients} clients, {seconds} s per phase")
    print(f"machine: nproc={machine['nproc']}, PostgreSQL {machine['postgres']}, "
          f"Python {machine['python']}")  # fmt: skip

    reference_setup(url)
    measure = reference_pgbench if shutil.which("pgbench") else reference_psycopg
    reference = measure(url, clients, seconds)
    print(f"  reference  hot-row update+insert ({reference['tool']}): {reference['tps']:.0f} tps")

    User = get_user_model()
    figures: dict = {}
    invariants: dict = {}
    svc_user = User.objects.create_user("bench-services")
    wallet_grant(user=svc_user, points=10**9, reason="bench")
    figures["services"] = phase_services(svc_user.pk, clients, seconds, record_events=True)
    invariants["services"] = check_invariants(svc_user)
    if not args.skip_diagnostic:
        # Not a target: the same phase with the realtime layer's event recorder switched off,
        # to show how much of a pair is the wallet's own work.
        bare_user = User.objects.create_user("bench-services-bare")
        wallet_grant(user=bare_user, points=10**9, reason="bench")
        diagnostic = phase_services(bare_user.pk, clients, seconds, record_events=False)
        invariants["servicesWithoutEventRecorder"] = check_invariants(bare_user)

    if not args.skip_http:
        http_user = User.objects.create_user("bench-http")
        wallet_grant(user=http_user, points=10**9, reason="bench")
        _, key = service_key_create(name="bench", scopes=["wallet:write"])
        # The server is a process of its own, configured as in production: its own pool (the
        # clients' no-pool setting is for forked processes) and Redis under a private prefix.
        server_env = {
            **env,
            "DATABASE_POOL": "true",
            "REDIS_URL": args.redis_url,
            "REDIS_PREFIX": urlsplit(url).path.strip("/"),
            "WEB_CONCURRENCY": "1",
        }
        figures["http"] = phase_http(server_env, key, http_user.pk, clients, seconds)
        invariants["http"] = check_invariants(http_user)

    # The machine is shared: measure the reference again at the end and compare to the mean.
    again = measure(url, clients, seconds)
    reference["tpsRuns"] = [round(reference["tps"], 1), round(again["tps"], 1)]
    reference["tps"] = round(statistics.fmean(reference["tpsRuns"]), 1)
    print(
        f"  reference  again at the end: {again['tps']:.0f} tps; "
        f"ratios below use the mean, {reference['tps']:.0f} tps"
    )
    passed = True
    for phase, figure in figures.items():
        ratio = figure["pairsPerSecond"] / reference["tps"]
        figure["ratio"] = round(ratio, 4)
        figure["target"] = TARGETS[phase]
        figure["meetsTarget"] = ratio >= TARGETS[phase]
        passed &= figure["meetsTarget"]
        lat = figure["latencyMs"] or {}
        print(
            f"  {phase:<9}  freeze+confirm pairs/s: {figure['pairsPerSecond']:>7.1f}"
            f"  = {ratio:6.1%} of reference (target ≥ {TARGETS[phase]:.0%})"
            f"  {'PASS' if figure['meetsTarget'] else 'MISS'}"
            f"  p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms per pair"
        )
        if cpu := figure.get("cpuMsPerPair"):
            print(
                f"             CPU per pair: clients {cpu['clients']:.2f} ms, "
                f"their PostgreSQL backends {cpu['postgres']:.2f} ms"
            )
    if not args.skip_diagnostic:
        diagnostic["ratio"] = round(diagnostic["pairsPerSecond"] / reference["tps"], 4)
        print(
            f"  (diagnostic) services without the event recorder: "
            f"{diagnostic['pairsPerSecond']:.1f} pairs/s = {diagnostic['ratio']:.1%} of reference"
        )
    print("  invariants hold after every phase: " + json.dumps(invariants))

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"wallet_bench-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "bench": "wallet freeze+confirm, one hot account",
                "at": stamp,
                "machine": machine,
                "clients": clients,
                "secondsPerPhase": seconds,
                "reference": reference,
                "figures": figures,
                "diagnostic": {"servicesWithoutEventRecorder": diagnostic}
                if not args.skip_diagnostic
                else None,
                "invariants": invariants,
                "meetsTargets": passed,
            },
            indent=2,
        )
    )
    print(f"  written: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
