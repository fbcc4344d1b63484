#!/usr/bin/env python
"""Broker wake-up benchmark: how long a message waits between enqueue and its actor starting.

An idle Dramatiq worker (a separate process, 8 threads, nothing else to do) consumes one queue;
this process enqueues messages carrying their enqueue time (wall clock, same machine) and the
actor pushes ``start - enqueue`` to a Redis list. Two phases per broker:

1. sequential — ``--messages`` messages spaced uniformly 0.5–2 s apart (the worker is idle and its
   consumer has backed off between them: the everyday case of a dispatch or run message);
2. burst — ``--burst`` messages enqueued at once; latency per message and wall to the last start.

It also reads the worker process's CPU time over the sequential phase (idle cost of polling).
Brokers (``--brokers``, comma-separated): ``redis`` (dramatiq's RedisBroker, worker timeout
1 s, dramatiq's default), ``redis200`` (worker timeout 200 ms, PODI's worker before ADR 0014),
``redis20`` (20 ms), ``doorbell`` (``podi.broker.DoorbellRedisBroker``, worker timeout 1 s),
``rabbitmq`` (dramatiq's RabbitmqBroker, a push consumer). Prints a table, writes JSON to
bench/results/ (docs/adr/0014-platform-plumbing.md).

    .venv/bin/python bench/broker_latency.py [--messages 20] [--burst 200]
        [--brokers redis,redis200,redis20,doorbell,rabbitmq]
        [--redis-url redis://127.0.0.1:6379/14] [--amqp-url amqp://guest:guest@127.0.0.1:5672/%2F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
KINDS = {
    # name: (broker, worker timeout ms)
    "redis": ("redis", 1000),
    "redis200": ("redis", 200),
    "redis20": ("redis", 20),
    "doorbell": ("doorbell", 1000),
    "rabbitmq": ("rabbitmq", 1000),
}


def make_broker(kind: str, redis_url: str, amqp_url: str, namespace: str):
    # Imported here so the bench runs without Django settings (only the brokers are needed).
    from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: PLC0415
    from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

    from podi.broker import DoorbellRedisBroker  # noqa: PLC0415

    backend = KINDS[kind][0]
    if backend == "rabbitmq":
        return RabbitmqBroker(url=amqp_url, middleware=[])
    cls = DoorbellRedisBroker if backend == "doorbell" else RedisBroker
    return cls(url=redis_url, namespace=namespace, middleware=[])


def declare(broker, queue: str, results_key: str, redis_url: str):
    client = redis.Redis.from_url(redis_url)

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"probe_{queue}")
    def probe(enqueued_at: float) -> None:
        client.rpush(results_key, f"{enqueued_at:.6f} {time.time():.6f}")

    return probe


def serve(args) -> None:
    """Child: run an idle worker until stdin closes."""
    broker = make_broker(args.kind, args.redis_url, args.amqp_url, args.namespace)
    dramatiq.set_broker(broker)
    declare(broker, args.queue, args.results_key, args.redis_url)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=KINDS[args.kind][1])
    worker.start()
    print("ready", flush=True)
    sys.stdin.read()
    worker.stop(timeout=2000)
    broker.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(pairs: list[tuple[float, float]]) -> dict:
    latencies = [start - enqueued for enqueued, start in pairs]
    if not latencies:  # nothing arrived (the Redis db flushed under the run?)
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ms = [v * 1000 for v in latencies]
    return {
        "n": len(ms),
        "p50": round(statistics.median(ms), 2),
        "p95": round(pct(ms, 0.95), 2),
        "max": round(max(ms), 2),
    }


def collect(client, key: str, n: int, timeout: float) -> list[tuple[float, float]]:
    """(enqueued at, started at) wall-clock pairs, as the actor recorded them."""
    deadline = time.monotonic() + timeout
    while client.llen(key) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return [tuple(float(x) for x in v.split()) for v in client.lrange(key, 0, -1)]


def run_kind(kind: str, args) -> dict:
    run = uuid.uuid4().hex[:8]
    namespace, queue = f"bench-broker-{run}", f"bench_{kind}_{run}"
    results_key = f"bench-broker-{run}:lat"
    client = redis.Redis.from_url(args.redis_url)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--kind", kind, "--queue", queue,
         "--namespace", namespace, "--results-key", results_key,
         "--redis-url", args.redis_url, "--amqp-url", args.amqp_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    broker = None
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind}: the worker did not start")
        broker = make_broker(kind, args.redis_url, args.amqp_url, namespace)
        probe = declare(broker, queue, results_key, args.redis_url)
        time.sleep(2.5)  # let the idle consumer back off fully
        cpu0, wall0 = cpu_seconds(child.pid), time.monotonic()
        for _ in range(args.messages):
            time.sleep(random.uniform(0.5, 2.0))
            probe.send(time.time())
        sequential = collect(client, results_key, args.messages, 10)
        cpu = cpu_seconds(child.pid) - cpu0
        idle_wall = time.monotonic() - wall0
        client.delete(results_key)
        time.sleep(2.5)
        started = time.time()
        for _ in range(args.burst):
            probe.send(time.time())
        burst = collect(client, results_key, args.burst, 30)
        wall = max(start for _, start in burst) - started if burst else float("nan")
        client.delete(results_key)
    finally:
        child.stdin.close()
        child.wait(timeout=20)
        if broker is not None:
            if kind == "rabbitmq":  # once its consumer is gone
                cleanup_rabbit(broker, queue)
            broker.close()
        for key in client.scan_iter(f"{namespace}:*"):
            client.delete(key)
    return {
        "broker": kind,
        "workerTimeoutMs": KINDS[kind][1],
        "sequentialMs": summary(sequential),
        "burstMs": summary(burst),
        "burstWallMs": round(wall * 1000, 1),
        "workerCpuPerIdleSecondMs": round(cpu / idle_wall * 1000, 2),
    }


def cleanup_rabbit(broker, queue: str) -> None:
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        broker.channel.queue_delete(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--brokers", default="redis,redis200,redis20,doorbell,rabbitmq")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    parser.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--results-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    rows = []
    for kind in args.brokers.split(","):
        print(f"… {kind}", flush=True)
        rows.append(run_kind(kind, args))
    print(
        f"\n{'broker':<10} {'timeout':>7} | {'seq p50':>8} {'p95':>8} {'max':>8} | "
        f"{'burst p50':>9} {'p95':>8} {'max':>8} {'wall':>8} | idle CPU ms/s"
    )
    for r in rows:
        s, b = r["sequentialMs"], r["burstMs"]
        print(
            f"{r['broker']:<10} {r['workerTimeoutMs']:>5}ms | {s['p50']:>8} {s['p95']:>8} "
            f"{s['max']:>8} | {b['p50']:>9} {b['p95']:>8} {b['max']:>8} {r['burstWallMs']:>8} | "
            f"{r['workerCpuPerIdleSecondMs']}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"broker_latency-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "messages": args.messages,
                "burst": args.burst,
                "results": rows,
            },
            indent=2,
        )  # fmt: skip
    )
    print(f"\nJSON: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
