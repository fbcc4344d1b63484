"""Background work of the integrations app: periodic executor health checks.

The reconciler step only *claims* executors whose last check is older than
``EXECUTOR_HEALTH_INTERVAL`` and enqueues one actor message each, so slow or dead executors never
hold up a reconciler pass.
"""

from __future__ import annotations

import dramatiq
from django.conf import settings

from integrations.models import Executor
from integrations.services import executor_health_check, executors_claim_health_checks
from podi.events import enqueue_on_commit
from podi.reconcile import reconcile_step


@dramatiq.actor(max_retries=0, time_limit=5 * 60 * 1000)
def executor_health_check_actor(executor_id: int) -> str | None:
    executor = Executor.objects.filter(pk=executor_id).first()
    if executor is None:
        return None
    return executor_health_check(executor=executor).health_status


@reconcile_step
def executors_health_refresh() -> int:
    """Enqueue a health check for every enabled executor not checked for a while."""
    claimed = executors_claim_health_checks(interval_seconds=settings.EXECUTOR_HEALTH_INTERVAL)
    for executor_id in claimed:
        enqueue_on_commit(executor_health_check_actor, executor_id)
    return len(claimed)
