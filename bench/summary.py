#!/usr/bin/env python
"""The targets table of issue #13, from the newest JSON of each bench in ``bench/results/``.

``make bench`` runs every bench, then this script with ``--since`` set to when it started, so
only figures of that run are shown (a bench that failed shows "—"). Each row: what, the figure
of issue #13 before the rewrite ("today"), the target, this run's figure, whether it is met, and
the file it comes from.

    .venv/bin/python bench/summary.py [--since 20261206T000000Z] [--results bench/results]
        [--baseline] [--real-comfyui]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def newest(results: Path, pattern: str, since: str, baseline: bool) -> tuple[dict, str] | None:
    """The newest ``pattern`` file whose timestamp (the name's last part) is ≥ ``since``;
    only the ``*-baseline-*`` ones with ``baseline``, else never those."""
    found = []
    for path in results.glob(pattern):
        if ("-baseline-" in path.name) != baseline:
            continue
        stamp = path.stem.rsplit("-", 1)[-1]
        if stamp >= since:
            found.append((stamp, path))
    if not found:
        return None
    _, path = max(found)
    try:
        return json.loads(path.read_text()), path.name
    except (OSError, ValueError):
        return None


def dig(body: dict | None, *keys):
    for key in keys:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and unit == "%":
        return f"{value:.1%}"
    return f"{value}{unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--since", default="", help="only results stamped at or after this")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="the committed *-baseline-* results (before the rewrite)",
    )
    parser.add_argument(
        "--real-comfyui",
        action="store_true",
        help="peer figures of the runs against a real ComfyUI (--comfyui)",
    )
    args = parser.parse_args()
    results = Path(args.results)

    b = args.baseline
    comfy = "comfyui" if args.real_comfyui else "testserver"
    peer_pg = newest(results, f"peer-postgres-{comfy}-*.json", args.since, b)
    peer_emb = newest(results, f"peer-embedded-{comfy}-*.json", args.since, b)
    tasks = newest(results, "tasks_bench-*.json", args.since, b)
    wallet = newest(results, "wallet_bench-*.json", args.since, b)
    fanout = newest(results, "ws_fanout-*.json", args.since, b)

    def body(found):
        return found[0] if found else None

    def src(found):
        return found[1] if found else "(no result)"

    pg, emb = body(peer_pg), body(peer_emb)
    rows = []

    def row(what, today, target, value, met, found, unit=""):
        verdict = "—" if value is None else ("MET" if met else "MISSED")
        rows.append((what, today, target, fmt(value, unit), verdict, src(found)))

    def le(value, limit):
        return value is not None and value <= limit

    def ge(value, limit):
        return value is not None and value >= limit

    for label, peer, found in (("PG+Redis", pg, peer_pg), ("embedded", emb, peer_emb)):
        fig = dig(peer, "figures") or {}
        burst_limit = 1.5 if label == "PG+Redis" else 3.0
        seq_today, burst_today = ("23–35×", "18–40×") if label == "PG+Redis" else ("5–6×", "7–10×")
        row(
            f"50 sequential jobs, p50, PODI/direct ({label})",
            seq_today,
            "≤ 2×",
            fig.get("seqP50Ratio"),
            le(fig.get("seqP50Ratio"), 2.0),
            found,
            "×",
        )
        row(
            f"100 jobs at once, wall, PODI/direct ({label})",
            burst_today,
            f"≤ {burst_limit:g}×",
            fig.get("burstWallRatio"),
            le(fig.get("burstWallRatio"), burst_limit),
            found,
            "×",
        )
        row(
            f"succeeded after ComfyUI's success, p95 ({label})",
            "up to ≈1 s",
            "≤ 10 ms",
            fig.get("succeededAfterComfyP95Ms"),
            le(fig.get("succeededAfterComfyP95Ms"), 10),
            found,
            " ms",
        )
        row(
            f"SQL statements per task, submit→terminal ({label})",
            "≈ 98",
            "≤ 30",
            fig.get("sqlPerTask"),
            le(fig.get("sqlPerTask"), 30),
            found,
        )
        row(
            f"  of which submit ({label})",
            "—",
            "≤ 8",
            fig.get("sqlSubmitPerTask"),
            le(fig.get("sqlSubmitPerTask"), 8),
            found,
        )
        row(
            f"PODI CPU per task, web+worker ({label})",
            "≈ 300 ms",
            "≤ 20 ms",
            fig.get("cpuMsPerTask"),
            le(fig.get("cpuMsPerTask"), 20),
            found,
            " ms",
        )

    t = body(tasks)
    share = dig(t, "submitThroughput", "shareOfTpcb")
    row(
        "submit over HTTP on PostgreSQL, share of TPC-B",
        "1.2 %",
        "≥ 15 %",
        share,
        ge(share, 0.15),
        tasks,
        "%",
    )
    p99 = dig(t, "pacedSubmit", "latencyMs", "p99")
    saturated = dig(t, "pacedSubmit", "saturated")
    row(
        "  paced submit 100/s, p99" + (" (SATURATED)" if saturated else ""),
        "saturated",
        "≤ 50 ms",
        p99,
        le(p99, 50) and not saturated,
        tasks,
        " ms",
    )
    w = body(wallet)
    services = dig(w, "figures", "services", "ratio")
    http = dig(w, "figures", "http", "ratio")
    row(
        "hot-account freeze+confirm, services",
        "6.7 %",
        "≥ 25 %",
        services,
        ge(services, 0.25),
        wallet,
        "%",
    )
    row("hot-account freeze+confirm, HTTP", "1.6 %", "≥ 10 %", http, ge(http, 0.10), wallet, "%")
    f = body(fanout)
    broadcast = dig(f, "broadcast", "p99_ms")
    row(
        "WebSocket broadcast, 1,000 subscribers, p99",
        "245 ms",
        "≤ 100 ms",
        broadcast,
        le(broadcast, 100),
        fanout,
        " ms",
    )
    idle = dig(t, "memory", "web", "idleAtStart", "rssMb")
    after = dig(t, "memory", "web", "idleAfterLoad", "rssMb")
    row("RSS per process, idle", "119 MB", "≤ 150 MB", idle, le(idle, 150), tasks, " MB")
    row("RSS per process, after load", "146 MB", "≤ 150 MB", after, le(after, 150), tasks, " MB")

    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    head = ("what", "today (#13)", "target", "figure", "")
    print()
    run = "the baseline run" if b else "this run"
    print(f"Issue #13 targets — the figures of the issue (before the rewrite) and {run}")
    print("  " + "  ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + "  from")
    for r in rows:
        print("  " + "  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    missing = sum(1 for r in rows if r[3] == "—")
    if missing:
        print(
            f"  {missing} figure(s) missing: a bench failed or was not run (see its output above)"
        )
    print_replacements(pg, emb, t, w, (peer_pg, peer_emb, tasks, wallet), src)
    return 0


def _median(values) -> float | None:
    values = [v for v in values or [] if isinstance(v, int | float)]
    return round(statistics.median(values), 2) if values else None


def print_replacements(pg, emb, t, w, found, src) -> None:
    """The bounds docs/adr/0022-targets-on-this-stack.md puts in place of five §8 rows: what
    PODI adds to a job, instead of ratios against a 3 ms model-free job."""
    peer_pg, peer_emb, tasks, wallet = found
    rows = []

    def row(what, bound, value, limit, higher_is_better, source, unit):
        if value is None:
            rows.append((what, bound, "—", "—", src(source)))
            return
        met = value >= limit if higher_is_better else value <= limit
        rows.append((what, bound, fmt(value, unit), "MET" if met else "MISSED", src(source)))

    for label, peer, source, burst_bound in (
        ("PG+Redis", pg, peer_pg, 35),
        ("embedded", emb, peer_emb, 40),
    ):
        seq_added = None
        podi_p50 = dig(peer, "sequential", "podiMs", "p50")
        direct_p50 = dig(peer, "sequential", "directMs", "p50")
        if podi_p50 is not None and direct_p50 is not None:
            seq_added = round(podi_p50 - direct_p50, 2)
        burst_added = None
        podi_wall = _median(dig(peer, "burst", "podiWallSeconds"))
        direct_wall = _median(dig(peer, "burst", "directWallSeconds"))
        jobs = dig(peer, "settings", "burst") or 100
        if podi_wall is not None and direct_wall is not None:
            burst_added = round((podi_wall - direct_wall) * 1000 / jobs, 2)
        burst_cpu = _median(
            [dig(r, "meter", "podiCpuMsPerTask") for r in dig(peer, "burst", "podi") or []]
        )
        row(f"PODI's added time per job, sequential p50 ({label})", "≤ 30 ms", seq_added, 30,
            False, source, " ms")  # fmt: skip
        row(f"PODI's added wall per job, burst ({label})", f"≤ {burst_bound} ms", burst_added,
            burst_bound, False, source, " ms")  # fmt: skip
        row(f"PODI CPU per task, sequential ({label})", "≤ 30 ms",
            dig(peer, "figures", "cpuMsPerTask"), 30, False, source, " ms")  # fmt: skip
        row(f"PODI CPU per task, burst ({label})", "≤ 40 ms", burst_cpu, 40, False, source,
            " ms")  # fmt: skip
    share = dig(t, "submitThroughput", "shareOfTpcb")
    row("submit over HTTP, share of TPC-B", "≥ 4 %", share, 0.04, True, tasks, "%")
    p99 = dig(t, "pacedSubmit", "latencyMs", "p99")
    if dig(t, "pacedSubmit", "saturated"):
        p99 = float("inf")
    row("paced submit 100/s, p99, not saturated", "≤ 250 ms", p99, 250, False, tasks, " ms")
    http = dig(w, "figures", "http", "ratio")
    row("hot-account freeze+confirm, HTTP", "≥ 2 %", http, 0.02, True, wallet, "%")

    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    print("ADR 0022 bounds, in place of the §8 ratio, CPU, submit and HTTP-pair rows")
    head = ("what", "bound", "figure", "")
    print("  " + "  ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + "  from")
    for r in rows:
        print("  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])


if __name__ == "__main__":
    sys.exit(main())
