"""The task core's SQL budget: statements per model-free task, counted on every connection."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from django.db import connection, connections
from django.db.backends.signals import connection_created

from integrations.models import Executor
from integrations.selectors import bindings_for_ability_id
from tasks.execution import task_run
from tasks.followers import following
from tasks.models import Task, TaskStatus
from tasks.services import tasks_dispatch_pending
from tests.tasks.conftest import make_ability, make_executor, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class StatementLog:
    def __init__(self):
        self.lock = threading.Lock()
        self.statements: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        with self.lock:
            self.statements.append(sql)
        return execute(sql, params, many, context)

    @contextmanager
    def phase(self):
        start = len(self.statements)
        mark: list[str] = []
        yield mark
        mark.extend(self.statements[start:])


@pytest.fixture
def statements():
    log = StatementLog()

    def install(connection, **_):  # noqa: F811 - the signal's argument
        if log not in connection.execute_wrappers:
            connection.execute_wrappers.append(log)

    for each in connections.all():
        install(each)
    connection_created.connect(install)
    yield log
    connection_created.disconnect(install)
    for each in connections.all():
        if log in each.execute_wrappers:
            each.execute_wrappers.remove(log)


# Statements per phase of one model-free task (COMMIT not counted; SQLite also counts its
# "BEGIN IMMEDIATE" and needs two statements where PostgreSQL needs one: a CTE). "run" allows
# for one heartbeat pass of the process's monitor (two statements) landing inside the run.
# Inside a worker process the attempt's claim for the worker adds two (ADR 0017). On PostgreSQL
# a dispatch pass reads its candidates, starts the task in one statement (the task, the slot,
# the hold, ADR 0031) and records its "running" event.
BUDGET = {
    "postgresql": {"submit": 3, "dispatch": 3, "run": 6},
    "sqlite": {"submit": 8, "dispatch": 8, "run": 19},
}
# A task that starts in its submit (ADR 0018): the claim and the "running" event join the
# submit, the catalog comes from the process's cache, and no dispatch pass runs. Submit and
# finish record their events together (``events_batched``): one statement on PostgreSQL. On
# PostgreSQL the finish settles the hold in one statement and learns from the slot's release
# whether a queued task waits for it (ADR 0019). The freeze is one statement there: the account,
# the hold and its entry (ADR 0023). A success is one statement on PostgreSQL (the task, the
# slot, the charge, the outputs and the assets) and its events one more (ADR 0024); outside a
# transaction, as the finisher runs it, the events are in that statement too, and so are the
# outputs' rows, with no read before their bytes are written (ADR 0024 point 6).
BUDGET_STARTED = {
    "postgresql": {"submit": 4, "run": 6},
    "sqlite": {"submit": 9, "run": 19},
}


def _check(budget: dict, phases: dict) -> None:
    for name, phase in phases.items():
        listing = "\n".join(sql[:140] for sql in phase)
        print(f"{name}: {len(phase)} statements\n{listing}")
        assert len(phase) <= budget[name], f"{name}: {len(phase)} statements\n{listing}"


@pytest.fixture(autouse=True)
def _catalog_kept(settings):
    """The catalog read while warming up stays cached for the measured task, however slow the
    machine (its 2 s default could lapse in between)."""
    settings.CATALOG_CACHE_SECONDS = 3600


def test_statements_per_task_started_at_submit(comfy, funded, api, statements):
    executor = make_executor("gpu-1", comfy.url)
    ability = make_ability("invert", [executor], points=5)
    client = api(funded)
    warm = client.post("/api/tasks/v1/submit", json={"action": "invert", "params": {}})
    assert warm.json()["status"] == "running"  # warm caches; nobody runs it
    bindings_for_ability_id(ability.pk)  # as a busy worker has them (ADR 0018)
    Task.objects.all().delete()
    Executor.objects.filter(pk=executor.pk).update(in_flight=0)
    with statements.phase() as submit:
        response = client.post("/api/tasks/v1/submit", json={"action": "invert", "params": {}})
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"
    task_id = response.json()["taskId"]
    with statements.phase() as run:
        assert task_run(task_id=task_id, attempt=1) == "following"
        wait_for(lambda: not following(task_id, 1))
    assert Task.objects.get(public_id=task_id).status == TaskStatus.SUCCEEDED
    _check(BUDGET_STARTED[connection.vendor], {"submit": submit, "run": run})


@pytest.mark.usefixtures("queued_submits")
def test_statements_per_task(comfy, funded, api, statements):
    executor = make_executor("gpu-1", comfy.url)
    ability = make_ability("invert", [executor], points=5)
    client = api(funded)
    client.post("/api/tasks/v1/submit", json={"action": "invert", "params": {}})  # warm caches
    bindings_for_ability_id(ability.pk)  # as a busy worker has them (ADR 0018)
    Task.objects.all().delete()
    with statements.phase() as submit:
        response = client.post("/api/tasks/v1/submit", json={"action": "invert", "params": {}})
    assert response.status_code == 202, response.text
    task_id = response.json()["taskId"]
    with statements.phase() as dispatch:
        assert tasks_dispatch_pending() == 1
    with statements.phase() as run:
        # Submitted in this thread, then followed by the executor's session; a finisher thread
        # stores the output and finishes the task (ADR 0015). Every thread's statements count.
        assert task_run(task_id=task_id, attempt=1) == "following"
        wait_for(lambda: not following(task_id, 1))  # no query of its own
    assert Task.objects.get(public_id=task_id).status == TaskStatus.SUCCEEDED
    _check(BUDGET[connection.vendor], {"submit": submit, "dispatch": dispatch, "run": run})
