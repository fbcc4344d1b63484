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
    return 0


if __name__ == "__main__":
    sys.exit(main())
