"""An actor that fails for want of a database connection is not lost: ``DatabaseBusyRetry``
enqueues its message again after a delay, a bounded number of times (docs/adr/0014)."""

from __future__ import annotations

import threading

import dramatiq
from django.db import OperationalError
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries
from psycopg_pool import PoolTimeout

from podi import runtime
from podi.runtime import DB_RETRY_LIMIT, DatabaseBusyRetry


def make_broker() -> StubBroker:
    broker = StubBroker(middleware=[DatabaseBusyRetry(), Retries(max_retries=0)])  # as in settings
    broker.emit_after("process_boot")
    return broker


def test_a_message_that_met_a_busy_database_runs_again_and_completes(monkeypatch):
    monkeypatch.setattr(runtime, "DB_RETRY_MAX_DELAY_MS", 10)  # keep the test short
    broker = make_broker()
    calls, done = [], threading.Event()

    @dramatiq.actor(broker=broker, max_retries=0)
    def busy_twice(task_id):
        calls.append(task_id)
        if len(calls) == 1:
            raise OperationalError("connection failed: FATAL: sorry, too many clients already")
        if len(calls) == 2:
            raise PoolTimeout("couldn't get a connection after 5.00 sec")
        done.set()

    busy_twice.send("t-1")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        assert done.wait(30), calls
        broker.join(busy_twice.queue_name, timeout=30_000, fail_fast=False)
    finally:
        worker.stop()
    assert calls == ["t-1", "t-1", "t-1"]


def test_other_failures_are_not_retried_and_the_retries_are_bounded(monkeypatch):
    monkeypatch.setattr(runtime, "DB_RETRY_MAX_DELAY_MS", 10)
    broker = make_broker()
    bugs, outages = [], []

    @dramatiq.actor(broker=broker, max_retries=0)
    def buggy():
        bugs.append(1)
        raise ValueError("a bug, not the database")

    @dramatiq.actor(broker=broker, max_retries=0)
    def always_down():
        outages.append(1)
        raise OperationalError("the database is down")

    buggy.send()
    always_down.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join(buggy.queue_name, timeout=60_000, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    assert bugs == [1]
    # The first run and DB_RETRY_LIMIT more; then the reconciler's turn.
    assert len(outages) == 1 + DB_RETRY_LIMIT
