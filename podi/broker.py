"""Dramatiq's Redis broker with a doorbell: an idle worker wakes when a message is enqueued.

Dramatiq's Redis consumer finds an empty queue by fetching it, then sleeps a backoff that grows to
the worker timeout before fetching again, so a message enqueued on an idle queue waits up to that
timeout before a worker sees it. Here ``enqueue`` also PUBLISHes a doorbell on
``<namespace>:bell:<queue>``, and each consumer, instead of sleeping, waits on its own
subscription to that channel. The subscription is made when the consumer is created and kept for
its life, so a bell rung between a fetch and the wait is read by that wait: none is lost.

A fetch that found fewer messages than it asked for emptied the queue: the consumer then fetches
again only after a bell (a message is pushed before its bell is published), or after the worker
timeout. It no longer polls an idle queue with a backoff that restarts small after every message:
that was about four fetch scripts per message on a queue fed one message at a time (ADR 0032).
The bell is only a hint; the queue in Redis stays the truth, and without it (a publisher on plain
``RedisBroker``, a message requeued by Dramatiq's maintenance, a dropped subscription) a consumer
still fetches at least once per worker timeout (docs/adr/0014-platform-plumbing.md).
"""

from __future__ import annotations

import time

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

# While every prefetched message is still being worked on the consumer may not fetch, so a bell
# cannot help it: it looks again after this many seconds (a local check, no Redis round trip).
FULL_RECHECK_SECONDS = 0.01
# A consumer waiting for a bell with messages out returns to its worker thread this often.
OUTSTANDING_RETURN_SECONDS = 0.05
# How long a sent, not yet answered, argument-less doorbell actor stands for the ones rung after
# it (``ring_pending``). Longer than a doorbell waits in a healthy queue; a doorbell lost with
# its mark set delays the next ring at most this long (and the reconciler's pass runs anyway).
PENDING_MARK_MS = 10_000


class DoorbellRedisBroker(RedisBroker):
    """``RedisBroker`` whose enqueue rings a doorbell its consumers wait on."""

    def bell_channel(self, queue_name: str) -> str:
        return f"{self.namespace}:bell:{queue_name}"

    @property
    def consumer_class(self):
        return DoorbellConsumer

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> None:
        """Dramatiq's enqueue script and the doorbell in one round trip: a pipeline of the
        script's ``EVALSHA`` and the bell's ``PUBLISH``, which Redis runs in that order (the
        message is in the queue before its bell rings), as two calls did (ADR 0032, session 13)."""
        script = self.scripts["dispatch"]
        args = [
            "enqueue",
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._should_do_maintenance("enqueue"),
            self._max_unpack_size(),
            message_id,
            data,
        ]
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(script.sha, 1, self.namespace, *args)
        pipe.publish(self.bell_channel(queue_name), b"1")
        # A connection error raises (nothing is known to be queued), as a lone EVALSHA did; a
        # failed PUBLISH is ignored (the message is queued: consumers still find it by polling).
        queued, _ = pipe.execute(raise_on_error=False)
        if isinstance(queued, redis.exceptions.NoScriptError):
            # Redis lost its scripts (a restart, SCRIPT FLUSH): the script object loads it again.
            script(keys=[self.namespace], args=args)
            self._ring(queue_name)
        elif isinstance(queued, Exception):
            raise queued

    def pending_key(self, actor_name: str) -> str:
        return f"{self.namespace}:pending:{actor_name}"

    def ring_pending(self, actor_name: str) -> bool:
        """Mark a doorbell of ``actor_name`` as sent and not yet answered; False when one already
        is, and the caller need not send another (ADR 0034). One ``SET NX PX``."""
        key = self.pending_key(actor_name)
        return bool(self.client.set(key, b"1", nx=True, px=PENDING_MARK_MS))

    def answer_pending(self, actor_name: str) -> None:
        """The doorbell actor starts its work: a ring from now on sends a new message, as the
        work about to start may not see what that ring is for."""
        self.client.delete(self.pending_key(actor_name))

    def _ring(self, queue_name: str) -> None:
        try:
            self.client.publish(self.bell_channel(queue_name), b"1")
        except redis.RedisError:  # the message is queued: consumers still find it by polling
            self.logger.warning("ringing the doorbell of %r failed", queue_name)


class DoorbellConsumer(_RedisConsumer):
    def __init__(self, broker, queue_name, prefetch, timeout):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.pubsub = broker.client.pubsub(ignore_subscribe_messages=True)
        try:
            self.pubsub.subscribe(broker.bell_channel(queue_name))
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None
        self.drained = False  # the last fetch found fewer messages than it asked for
        self.poll_at = 0.0  # when to fetch again without a bell (the worker timeout after one)

    def __next__(self):
        try:
            if not self.message_cache:
                if self.outstanding_message_count >= self.prefetch:
                    time.sleep(FULL_RECHECK_SECONDS)
                    return None
                if self.drained:
                    # The last fetch took all there was: only a bell says there is more (or, the
                    # safety net for a message queued without one, the timeout since that fetch).
                    left = self.poll_at - time.monotonic()
                    if left > 0:
                        # With messages out (running, or delayed ones held by the worker), the
                        # worker's thread gets the loop back often, to ack them and to enqueue
                        # the delayed ones when due; no Redis call comes with that.
                        if self.outstanding_message_count:
                            left = min(left, OUTSTANDING_RETURN_SECONDS)
                        if not self._wait_for_bell(left):
                            return None
                        while self.pubsub.get_message(timeout=0) is not None:  # drain the rest
                            pass
                    self.drained = False
                    return None
                wanted = self.prefetch - self.outstanding_message_count
                self.message_cache = self.broker.do_fetch(self.queue_name, wanted)
                self.drained = len(self.message_cache) < wanted
                self.poll_at = time.monotonic() + self.timeout / 1000
            if self.message_cache:
                message = Message.decode(self.message_cache.pop(0))
                self.queued_message_ids.add(message.message_id)
                return MessageProxy(message)
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
