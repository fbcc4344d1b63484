"""Prometheus instruments for what happens inside a process (HTTP requests, dispatches, runs).

Counts that the database already knows (tasks by status, queue depth, executor load, webhook
attempts, wallet points) are not kept here: ``podi.console.metrics`` reads them at scrape time, so they
are right whichever process did the work. These histograms live in the process that observed
them; with several processes (web + separate workers) set ``PROMETHEUS_MULTIPROC_DIR`` so every
process writes its samples there and ``/metrics`` adds them up (see docs/adr, README "Console").
"""

from __future__ import annotations

import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import transaction
from prometheus_client import Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TASK_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

HTTP_REQUEST_SECONDS = Histogram(
    "podi_http_request_duration_seconds",
    "HTTP request latency by method, route pattern and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
TASK_DISPATCH_SECONDS = Histogram(
    "podi_task_dispatch_latency_seconds",
    "Seconds from a task's submit to its first dispatch to an executor.",
    ["ability"],
    buckets=TASK_BUCKETS,
)
TASK_RUN_SECONDS = Histogram(
    "podi_task_run_duration_seconds",
    "Seconds from the last dispatch of a task to its terminal state.",
    ["ability", "executor", "status"],
    buckets=TASK_BUCKETS,
)


def observe_on_commit(histogram: Histogram, seconds: float, **labels: str) -> None:
    """Observe once the surrounding transaction commits (a rolled-back dispatch never happened)."""
    transaction.on_commit(lambda: histogram.labels(**labels).observe(max(seconds, 0.0)))


def _route(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"  # 404s: never the raw path, which would explode the label set
    return "/" + (match.route or match.view_name or "").lstrip("^").rstrip("$")


class MetricsMiddleware:
    """Times every HTTP request; labels are the URL pattern, never the concrete path."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def _observe(self, request, response, started: float) -> None:
        HTTP_REQUEST_SECONDS.labels(
            method=request.method, route=_route(request), status=str(response.status_code)
        ).observe(time.perf_counter() - started)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._observe(request, response, started)
        return response

    async def _acall(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        self._observe(request, response, started)
        return response
