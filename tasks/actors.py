"""Dramatiq actors of the tasks app. They take ids, check state, and call services."""

from __future__ import annotations

import dramatiq

from podi.events import doorbell_answered
from podi.reconcile import reconcile_step
from tasks import execution, services

DAY_MS = 24 * 3600 * 1000


@dramatiq.actor(actor_name=services.DISPATCH_ACTOR, max_retries=0, time_limit=120_000)
def dispatch_pending() -> None:
    # Before the pass reads the queue: a submit committed from now on rings again (ADR 0034).
    doorbell_answered(services.DISPATCH_ACTOR)
    services.tasks_dispatch_doorbell()


@dramatiq.actor(actor_name=services.RUN_ACTOR, queue_name="runs", max_retries=0, time_limit=DAY_MS)
def run_task(task_id: str, attempt: int) -> None:
    execution.task_run(task_id=task_id, attempt=attempt)


@dramatiq.actor(
    actor_name=services.INTERRUPT_ACTOR,
    max_retries=3,
    min_backoff=1000,
    max_backoff=30_000,
    time_limit=60_000,
)
def interrupt_on_executor(executor_id: int, external_id: str, client_id: str = "") -> None:
    execution.executor_interrupt(
        executor_id=executor_id, external_id=external_id, state={"clientId": client_id}
    )


@reconcile_step
def reconcile_tasks() -> dict[str, int]:
    return execution.tasks_reconcile()
