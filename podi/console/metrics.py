"""``/metrics``: the process histograms of ``podi.metrics`` plus the database's numbers, read at
scrape time through ``console.selectors`` (the same reads as the dashboard)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from integrations.models import HealthStatus
from podi.console import selectors
from podi.realtime import selectors as realtime_selectors


class OpsCollector(Collector):
    """Gauges and counters computed from the database on each scrape."""

    def collect(self):
        tasks = GaugeMetricFamily(
            "podi_tasks",
            "Tasks by status, ability and executor.",
            labels=["status", "ability", "executor"],
        )
        for status, ability, executor, count in selectors.task_counts():
            tasks.add_metric([status, ability, executor], count)
        yield tasks

        numbers = selectors.task_numbers()
        yield GaugeMetricFamily("podi_queue_depth", "Queued tasks.", value=numbers["queued"])
        yield GaugeMetricFamily(
            "podi_queue_oldest_age_seconds",
            "Age of the oldest queued task (0 when none is queued).",
            value=selectors.queue_oldest_age(),
        )

        in_flight = GaugeMetricFamily(
            "podi_executor_in_flight", "Running tasks per executor.", labels=["executor", "kind"]
        )
        capacity = GaugeMetricFamily(
            "podi_executor_capacity", "maxConcurrency per executor.", labels=["executor", "kind"]
        )
        health = GaugeMetricFamily(
            "podi_executor_health",
            "1 for the executor's current health status (healthy/unhealthy/unknown), else 0.",
            labels=["executor", "kind", "status"],
        )
        enabled = GaugeMetricFamily(
            "podi_executor_enabled", "1 when the executor is enabled.", labels=["executor", "kind"]
        )
        for row in selectors.executors_load():
            labels = [row["name"], row["kind"]]
            in_flight.add_metric(labels, row["running"])
            capacity.add_metric(labels, row["maxConcurrency"])
            enabled.add_metric(labels, 1 if row["enabled"] else 0)
            for status in HealthStatus.values:
                health.add_metric([*labels, status], 1 if row["health"] == status else 0)
        yield from (in_flight, capacity, health, enabled)

        yield GaugeMetricFamily(
            "podi_bindings_not_runnable",
            "Enabled bindings dispatch cannot use (executor disabled/unhealthy, nodes missing).",
            value=selectors.bindings_that_cannot_run(limit=0)["count"],
        )
        yield GaugeMetricFamily(
            "podi_agents_offline",
            "Enabled agents marked offline.",
            value=selectors.agents_offline(limit=0)["count"],
        )
        webhooks = selectors.failing_webhook_endpoints(limit=0)
        yield GaugeMetricFamily(
            "podi_webhook_failing_endpoints",
            "Callback URLs with failing or exhausted deliveries in the last 24 h.",
            value=webhooks["count"],
        )

        attempts = CounterMetricFamily(
            "podi_webhook_attempts", "Webhook delivery attempts by outcome.", labels=["outcome"]
        )
        for outcome, count in realtime_selectors.webhook_attempt_outcomes().items():
            attempts.add_metric([outcome], count)
        yield attempts

        points = CounterMetricFamily(
            "podi_wallet_points",
            "Points charged (confirmed holds) and released (released or expired holds).",
            labels=["kind"],
        )
        for kind, total in selectors.points_totals().items():
            points.add_metric([kind], total)
        yield points


class _ProcessCollector(Collector):
    """This process's own instruments (single-process mode)."""

    def collect(self):
        return REGISTRY.collect()


def render_metrics() -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessCollector())
    registry.register(OpsCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
