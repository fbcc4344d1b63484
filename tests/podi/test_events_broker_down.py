"""An unreachable broker never fails the request that committed: the message is a doorbell."""

import logging
import socket

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from podi.events import enqueue_on_commit


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_enqueue_with_the_broker_down_logs_and_goes_on(caplog, transactional_db):
    broker = RedisBroker(url=f"redis://127.0.0.1:{closed_port()}/0", namespace="podi-test-down")
    received = []

    @dramatiq.actor(broker=broker, actor_name="doorbell_probe")
    def doorbell(value):
        received.append(value)

    with caplog.at_level(logging.WARNING, logger="podi.events"):
        enqueue_on_commit(doorbell, 1)  # outside a transaction: sent at once
        enqueue_on_commit(doorbell, 2, delay=1000)
    assert received == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "podi.events"]
    assert len(warnings) == 2
    assert all("broker unreachable" in w for w in warnings), warnings
