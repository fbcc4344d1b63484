"""Reads and seeds the fleet's own database with Django: ``python -m tests.fleet.probe CMD``.

Run by tests/fleet/hosts.py in a subprocess whose environment points at the fleet's private
PostgreSQL (never the test run's database). Prints one JSON line.

* ``seed EXEC1_URL EXEC2_URL HOOK_URL``: two ComfyUI executors, a sleep workflow, the ability
  ``fleet-sleep`` bound to both, four funded users.
* ``check TASK_IDS_FILE``: for the listed tasks: statuses, terminal events per task, holds,
  webhook deliveries; wallet invariants of every fleet user.
* ``executors``: each executor's health.
* ``running``: queued and running tasks with the worker (id ``host:pid:…``) running each.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import django

ACTION = "fleet-sleep"
USERS = [f"fleet-user-{i}" for i in range(4)]
GRANT = 100_000
GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": "{{color}}"},
    },
    "2": {
        "class_type": "PodiTestSleep",
        "inputs": {"seconds": "{{seconds}}", "steps": 4, "image": ["1", 0]},
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fleet"}},
}
SCHEMA = {
    "type": "object",
    "properties": {
        "seconds": {"type": "number", "minimum": 0, "maximum": 30, "default": 1},
        "color": {"type": "integer", "minimum": 0, "maximum": 16777215, "default": 255},
    },
    "additionalProperties": False,
}


def seed(exec1: str, exec2: str) -> dict:
    from django.contrib.auth import get_user_model

    from integrations.models import Ability, Executor, Workflow, WorkflowBinding
    from integrations.services import workflow_version_create
    from wallet.services import wallet_grant

    workflow = Workflow.objects.create(name="fleet-sleep", kind="comfyui")
    workflow_version_create(workflow=workflow, definition=GRAPH, params_schema=SCHEMA)
    ability = Ability.objects.create(code=ACTION, display_name="Fleet sleep", points=3)
    for name, url in (("exec1", exec1), ("exec2", exec2)):
        executor = Executor.objects.create(
            name=name, kind="comfyui", base_url=url, max_concurrency=3
        )
        WorkflowBinding.objects.create(
            ability=ability,
            workflow=workflow,
            executor=executor,
            max_attempts=5,
            queue_timeout=600,
            run_timeout=300,
        )
    for username in USERS:
        user = get_user_model().objects.create_user(username, password=os.environ["FLEET_PASSWORD"])
        wallet_grant(user=user, points=GRANT, reason="fleet", reference=f"fleet-{username}")
    return {"users": USERS, "action": ACTION}


def check(task_file: str) -> dict:
    from django.contrib.auth import get_user_model

    from podi.realtime.models import Event, WebhookDelivery
    from tasks.models import TERMINAL_STATUSES, Task
    from tests.wallet.invariants import assert_wallet_invariants
    from wallet.models import Hold

    ids = [line.strip() for line in open(task_file) if line.strip()]
    tasks = {t.public_id: t for t in Task.objects.filter(public_id__in=ids)}
    terminal_events = Counter()
    for task_id, payload in Event.objects.filter(
        task_public_id__in=ids, type="task.status"
    ).values_list("task_public_id", "payload"):
        if payload.get("status") in TERMINAL_STATUSES:
            terminal_events[task_id] += 1
    holds = {h.task_id: h.status for h in Hold.objects.filter(task_id__in=ids)}
    hold_mismatch = []
    for task_id, task in tasks.items():
        expected = {"succeeded": "confirmed"}.get(task.status, "released")
        if task.status in TERMINAL_STATUSES and holds.get(task_id) != expected:
            hold_mismatch.append(f"{task_id} {task.status} hold {holds.get(task_id)}")
    deliveries = list(
        WebhookDelivery.objects.filter(task_public_id__in=ids).values(
            "public_id", "task_public_id", "event_type", "status", "attempts"
        )
    )
    invariants = {}
    latest_seq = {}
    for user in get_user_model().objects.filter(username__in=USERS):
        last = Event.objects.filter(user=user).order_by("-seq").values_list("seq", flat=True)
        latest_seq[user.username] = last.first() or 0
        try:
            assert_wallet_invariants(user)
            invariants[user.username] = "ok"
        except AssertionError as exc:
            invariants[user.username] = str(exc)
    return {
        "missing": [i for i in ids if i not in tasks],
        "statuses": dict(Counter(t.status for t in tasks.values())),
        "notTerminal": sorted(
            f"{t.public_id} {t.status} attempts={t.attempts} executor={t.executor_id}"
            for t in tasks.values()
            if t.status not in TERMINAL_STATUSES
        ),
        "failed": sorted(
            f"{t.public_id} {t.error_code}: {t.error_message[:120]}"
            for t in tasks.values()
            if t.status == "failed"
        ),
        "terminalEventsNot1": {i: terminal_events[i] for i in tasks if terminal_events[i] != 1},
        "holdMismatch": hold_mismatch,
        "deliveries": deliveries,
        "invariants": invariants,
        "latestSeq": latest_seq,
    }


def executors() -> dict:
    from integrations.models import Executor

    return {
        e.name: {"health": e.health_status, "error": e.health_error[:200]}
        for e in Executor.objects.order_by("name")
    }


def running() -> dict:
    from tasks.models import Task

    return {
        task_id: {"worker": (state or {}).get("worker"), "status": status}
        for task_id, state, status in Task.objects.filter(
            status__in=["running", "queued"]
        ).values_list("public_id", "executor_state", "status")
    }


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "podi.settings")
    django.setup()
    command, *args = sys.argv[1:]
    result = {"seed": seed, "check": check, "executors": executors, "running": running}[command](
        *args
    )
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
