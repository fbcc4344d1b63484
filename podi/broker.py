"""Dramatiq's Redis broker with a doorbell: an idle worker wakes when a message is enqueued.

Dramatiq's Redis consumer finds an empty queue by fetching it, then sleeps a backoff that grows to
the worker timeout before fetching again, so a message enqueued on an idle queue waits up to that
timeout before a worker sees it. Here ``enqueue`` also PUBLISHes a doorbell on
``<namespace>:bell:<queue>``, and each consumer, instead of sleeping, waits on its own
subscription to that channel for at most the same backoff. The subscription is made when the
consumer is created and kept for its life, so a bell rung between a fetch and the wait is read by
that wait: none is lost. The bell is only a hint; the queue in Redis stays the truth, and without
it (a publisher on plain ``RedisBroker``, a dropped subscription) a consumer still fetches at least
once per backoff, as before (docs/adr/0014-platform-plumbing.md).
"""

from __future__ import annotations

import time

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

# While every prefetched message is still being worked on the consumer may not fetch, so a bell
# cannot help it: it looks again after this many seconds (a local check, no Redis round trip).
FULL_RECHECK_SECONDS = 0.01


class DoorbellRedisBroker(RedisBroker):
    """``RedisBroker`` whose enqueue rings a doorbell its consumers wait on."""

    def bell_channel(self, queue_name: str) -> str:
        return f"{self.namespace}:bell:{queue_name}"

    @property
    def consumer_class(self):
        return DoorbellConsumer

    def enqueue(self, message, *, delay=None):
        message = super().enqueue(message, delay=delay)
        try:
            self.client.publish(self.bell_channel(message.queue_name), b"1")
        except redis.RedisError:  # the message is queued: consumers still find it by polling
            self.logger.warning("ringing the doorbell of %r failed", message.queue_name)
        return message


class DoorbellConsumer(_RedisConsumer):
    def __init__(self, broker, queue_name, prefetch, timeout):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.pubsub = broker.client.pubsub(ignore_subscribe_messages=True)
        try:
            self.pubsub.subscribe(broker.bell_channel(queue_name))
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def __next__(self):
        try:
            if not self.message_cache:
                if self.outstanding_message_count >= self.prefetch:
                    time.sleep(FULL_RECHECK_SECONDS)
                    return None
                self.message_cache = self.broker.do_fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count
                )
            if self.message_cache:
                self.misses = 0
                message = Message.decode(self.message_cache.pop(0))
                self.queued_message_ids.add(message.message_id)
                return MessageProxy(message)
            # Empty queue: wait for a bell (or the backoff, growing to the worker timeout).
            self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
            if self._wait_for_bell(backoff_ms / 1000):
                self.misses = 0
                while self.pubsub.get_message(timeout=0) is not None:  # drain other bells
                    pass
            return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _wait_for_bell(self, seconds: float) -> bool:
        # get_message also returns None for a (skipped) subscribe confirmation: wait out the rest.
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self.pubsub.get_message(timeout=remaining) is not None:
                return True
        return False

    def close(self):
        try:
            self.pubsub.close()
        finally:
            super().close()
