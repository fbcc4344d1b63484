"""Background work of the agent protocol (found like every app's ``actors`` module).

Reconciler steps: offline detection (three missed heartbeats), push retries (claimed with a
guarded update and sent by one actor message each, so a dead agent never stalls a pass) and
expiry of agent tasks.
"""

from __future__ import annotations

import dramatiq

from integrations.agents.services.agent_task_reports import agent_tasks_expire
from integrations.agents.services.agent_tasks import agent_task_push, agent_tasks_claim_pushes
from integrations.agents.services.liveness import agents_mark_offline
from podi.events import enqueue_on_commit
from podi.reconcile import reconcile_step


@dramatiq.actor(max_retries=0, time_limit=2 * 60 * 1000)
def agent_task_push_actor(task_id: str) -> str | None:
    task = agent_task_push(task_id=task_id, claimed=True)
    return task.status if task is not None else None


@reconcile_step
def agents_liveness() -> int:
    """Agents silent for three heartbeat intervals go offline (executor unhealthy, alert)."""
    return agents_mark_offline()


@reconcile_step
def agent_tasks_push_due() -> int:
    """Push pending agent tasks whose (re)push is due: new ones, busy agents, failed pushes."""
    claimed = agent_tasks_claim_pushes()
    for task_id in claimed:
        enqueue_on_commit(agent_task_push_actor, task_id)
    return len(claimed)


@reconcile_step
def agent_tasks_expiry() -> int:
    """Pending or running agent tasks past their expiry end ``expired``."""
    return agent_tasks_expire()
