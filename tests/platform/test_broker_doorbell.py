"""The Redis broker's doorbell: an idle consumer waiting out its full timeout still takes a new
message at once, because enqueue rings the bell it waits on (docs/adr/0014, ADR 0032)."""

from __future__ import annotations

import os
import threading
import time
import uuid

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from podi.broker import DoorbellRedisBroker
from podi.events import doorbell_answered, ring_on_commit

# The consumers here wait up to a minute on an empty queue: only a bell can wake them sooner.
IDLE_TIMEOUT_MS = 60_000


@pytest.fixture
def broker():
    namespace = f"podi-test-doorbell-{uuid.uuid4().hex[:8]}"
    broker = DoorbellRedisBroker(url=os.environ["REDIS_URL"], namespace=namespace, middleware=[])
    broker.declare_queue("q")
    yield broker
    for key in broker.client.scan_iter(f"{namespace}:*"):
        broker.client.delete(key)
    broker.close()


def message(queue: str = "q") -> dramatiq.Message:
    return dramatiq.Message(queue_name=queue, actor_name="probe", args=(), kwargs={}, options={})


def next_message(consumer, deadline: float):
    while time.monotonic() < deadline:
        found = next(consumer)
        if found is not None:
            return found
    return None


def test_a_waiting_consumer_wakes_on_the_bell(broker):
    consumer = broker.consume("q", prefetch=2, timeout=IDLE_TIMEOUT_MS)
    try:
        assert next(consumer) is None  # fetched: the queue is empty
        sent = message()
        threading.Timer(0.5, broker.enqueue, args=(sent,)).start()
        # The consumer waits on the bell (for up to its minute), which rings with the message.
        began = time.monotonic()
        assert next(consumer) is None
        assert time.monotonic() - began < 30
        got = next(consumer)
        assert got is not None and got.message_id == sent.message_id
        consumer.ack(got)
    finally:
        consumer.close()


def test_a_bell_rung_before_the_wait_is_not_lost(broker):
    """Enqueued between the consumer's fetch and its wait: the subscription holds the bell."""
    consumer = broker.consume("q", prefetch=2, timeout=IDLE_TIMEOUT_MS)
    try:
        assert next(consumer) is None  # subscribed, fetched; nothing queued yet
        sent = broker.enqueue(message())  # rings while nobody waits
        began = time.monotonic()
        assert next(consumer) is None  # the wait reads the bell at once
        got = next(consumer)  # and the next call fetches the message
        assert time.monotonic() - began < 30
        assert got is not None and got.message_id == sent.message_id
        consumer.ack(got)
    finally:
        consumer.close()


def test_an_idle_consumer_fetches_once_per_message(broker):
    """A queue fed one message at a time costs one fetch per message: a fetch that found fewer
    than it asked for emptied the queue, so the consumer waits for the next bell instead of
    fetching again (or polling with a backoff that restarts small after each message)."""
    consumer = broker.consume("q", prefetch=2, timeout=IDLE_TIMEOUT_MS)
    fetches = []
    fetch = broker.do_fetch

    def counted(*args):
        fetches.append(args)
        return fetch(*args)

    broker.do_fetch = counted
    try:
        assert next(consumer) is None
        for _ in range(5):
            threading.Timer(0.05, broker.enqueue, args=(message(),)).start()
            got = next_message(consumer, time.monotonic() + 30)
            assert got is not None
            consumer.ack(got)
        assert len(fetches) == 1 + 5
    finally:
        broker.do_fetch = fetch
        consumer.close()


def test_plain_redis_broker_messages_are_still_consumed(broker):
    """A publisher on dramatiq's RedisBroker (no bell) is still served, by polling."""
    plain = RedisBroker(url=os.environ["REDIS_URL"], namespace=broker.namespace, middleware=[])
    consumer = broker.consume("q", prefetch=2, timeout=200)
    try:
        plain.enqueue(message())
        got = next_message(consumer, time.monotonic() + 25)
        assert got is not None
        consumer.ack(got)
    finally:
        consumer.close()
        plain.close()


def test_a_worker_on_the_doorbell_broker_runs_actors_and_delayed_messages(broker):
    ran = []
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="q", actor_name=f"probe_{uuid.uuid4().hex[:6]}")
    def probe(value):
        ran.append(value)
        if len(ran) == 3:
            done.set()

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=IDLE_TIMEOUT_MS)
    worker.start()
    try:
        time.sleep(0.2)
        probe.send(1)
        probe.send(2)
        probe.send_with_options(args=(3,), delay=300)
        assert done.wait(25), ran
        assert sorted(ran) == [1, 2, 3]
    finally:
        worker.stop(timeout=5000)


def test_enqueue_queues_and_rings_in_one_round_trip(broker, monkeypatch):
    """The enqueue script and the bell go to Redis as one pipeline (ADR 0032, session 13)."""
    broker.enqueue(message())  # the first enqueue also reads Redis's Lua stack size, once
    sent = []
    real = redis.connection.AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        sent.append(command)
        return real(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    queued = broker.enqueue(message())
    monkeypatch.undo()
    assert len(sent) == 1
    consumer = broker.consume("q", prefetch=4, timeout=IDLE_TIMEOUT_MS)
    try:
        got = [next_message(consumer, time.monotonic() + 10) for _ in range(2)]
        assert got[1].message_id == queued.message_id
        for each in got:
            consumer.ack(each)
    finally:
        consumer.close()


def test_a_redis_that_lost_its_scripts_still_queues_and_rings(broker):
    """After a Redis restart or SCRIPT FLUSH the pipeline's EVALSHA answers NOSCRIPT: the
    script is loaded again, the message queued once, and the waiting consumer woken."""
    consumer = broker.consume("q", prefetch=2, timeout=IDLE_TIMEOUT_MS)
    try:
        assert next(consumer) is None  # fetched: empty; it now waits for a bell
        broker.client.script_flush()
        sent = message()
        threading.Timer(0.3, broker.enqueue, args=(sent,)).start()
        began = time.monotonic()
        got = next_message(consumer, time.monotonic() + 30)
        assert time.monotonic() - began < 30  # the bell, not the minute-long timeout
        assert got is not None and got.message_id == sent.message_id
        consumer.ack(got)
        assert next(consumer) is None and broker.client.llen(f"{broker.namespace}:q") == 0
    finally:
        consumer.close()


def test_a_doorbell_rung_again_before_its_answer_is_not_sent_again(broker, transactional_db):
    """An argument-less doorbell (the dispatch pass) waiting in the queue covers the rings after
    it; once its actor answers, the next ring sends a new one (ADR 0034)."""

    @dramatiq.actor(broker=broker, queue_name="q", actor_name=f"bell_{uuid.uuid4().hex[:6]}")
    def bell():
        pass

    queue = f"{broker.namespace}:q"
    for _ in range(5):
        ring_on_commit(bell)  # outside a transaction: rung now
    assert broker.client.llen(queue) == 1
    mark = broker.client.pttl(broker.pending_key(bell.actor_name))
    assert 0 < mark <= 10_000  # a lost doorbell holds the next rings back for seconds at most

    broker.answer_pending(bell.actor_name)  # what the actor does before its work
    ring_on_commit(bell)
    ring_on_commit(bell)
    assert broker.client.llen(queue) == 2


def test_a_worker_answers_each_doorbell_before_its_work(broker, transactional_db):
    """Through a real worker: every ring made after the actor began its work is answered by a
    later run, so nothing rung during a run is lost (ADR 0034)."""
    runs = []
    first_started = threading.Event()
    release_first = threading.Event()
    name = f"bell_{uuid.uuid4().hex[:6]}"

    @dramatiq.actor(broker=broker, queue_name="q", actor_name=name)
    def bell():
        doorbell_answered(name)
        runs.append(time.monotonic())
        if len(runs) == 1:
            first_started.set()
            release_first.wait(10)

    previous = dramatiq.get_broker()
    dramatiq.set_broker(broker)  # doorbell_answered answers on the process's broker
    # One thread: the second message runs only once the first run has ended.
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=IDLE_TIMEOUT_MS)
    worker.start()
    try:
        ring_on_commit(bell)
        assert first_started.wait(20)
        for _ in range(3):
            ring_on_commit(bell)  # during the first run: one more message, not three
        release_first.set()
        deadline = time.monotonic() + 20
        while len(runs) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert len(runs) == 2
    finally:
        worker.stop(timeout=5000)
        dramatiq.set_broker(previous)


def test_a_doorbell_that_could_not_be_sent_leaves_no_mark(broker, transactional_db):
    """A ring whose message failed to go out (the broker refused it) clears its mark, so the
    next ring tries again instead of trusting a doorbell that is not there (ADR 0034)."""
    refused = []
    real = broker.do_enqueue

    def refuse_once(queue_name, message_id, data):
        if not refused:
            refused.append(message_id)
            raise redis.ConnectionError("refused for the test")
        return real(queue_name, message_id, data)

    broker.do_enqueue = refuse_once

    @dramatiq.actor(broker=broker, queue_name="q", actor_name=f"bell_{uuid.uuid4().hex[:6]}")
    def bell():
        pass

    queue = f"{broker.namespace}:q"
    ring_on_commit(bell)  # refused: logged, not raised, and the mark is cleared
    assert refused and broker.client.llen(queue) == 0
    assert broker.client.exists(broker.pending_key(bell.actor_name)) == 0
    ring_on_commit(bell)
    assert broker.client.llen(queue) == 1
