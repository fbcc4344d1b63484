"""Side effects after commit: ``enqueue_on_commit`` sends an actor once the transaction commits.

Events have an app of their own: ``podi.realtime.events.emit`` (docs/adr/0006-live-events.md).
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import dramatiq.errors
import redis.exceptions
from django.db import transaction

logger = logging.getLogger("podi.events")


def enqueue_on_commit(actor, *args: Any, using: str = "default", **options: Any) -> None:
    """Send ``actor`` after the current transaction commits (immediately outside one).

    The message is only a doorbell: when the broker is unreachable (Redis restarting) the send is
    logged and dropped, never turned into an error of the request that already committed; the
    reconciler finds the work from the database rows (docs/adr/0012-fleet.md).
    """
    transaction.on_commit(lambda: _send_quietly(actor, args, options), using=using)


def _send_quietly(actor, args: tuple, options: dict) -> bool:
    """Send; False (logged) when the broker is unreachable."""
    try:
        if options:
            actor.send_with_options(args=args, **options)
        else:
            actor.send(*args)
        return True
    except (
        dramatiq.errors.BrokerConnectionError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    ) as exc:
        logger.warning(
            "broker unreachable, %s not sent (the reconciler catches up): %s", actor, exc
        )
        return False


def ring_on_commit(actor, using: str = "default") -> None:
    """Send the argument-less doorbell ``actor`` after the current transaction commits, unless
    a doorbell of it sent earlier is still waiting to be answered (ADR 0034).

    A doorbell actor (the dispatch pass) does the same work however many times it was rung, and
    answers (``doorbell_answered``) before that work reads anything: a ring that finds one still
    waiting is covered by it. On a broker without the mark (RabbitMQ, the in-process stub) every
    ring sends."""
    transaction.on_commit(lambda: _ring_quietly(actor), using=using)


def _ring_quietly(actor) -> None:
    ring_pending = getattr(actor.broker, "ring_pending", None)
    if ring_pending is not None:
        try:
            if not ring_pending(actor.actor_name):
                return
        except redis.exceptions.RedisError as exc:
            logger.warning(
                "broker unreachable, %s not rung (the reconciler catches up): %s", actor, exc
            )
            return
    if not _send_quietly(actor, (), {}) and ring_pending is not None:
        _answer_quietly(actor.broker, actor.actor_name)  # not sent: the next ring sends


def doorbell_answered(actor_name: str) -> None:
    """Called by a doorbell actor before its work: rings from now on send again."""
    _answer_quietly(dramatiq.get_broker(), actor_name)


def _answer_quietly(broker, actor_name: str) -> None:
    answer = getattr(broker, "answer_pending", None)
    if answer is None:
        return
    try:
        answer(actor_name)
    except redis.exceptions.RedisError as exc:  # the mark lapses by itself
        logger.warning("could not clear the pending mark of %s: %s", actor_name, exc)


def actor_named(name: str) -> dramatiq.Actor:
    """The actor declared under ``name``.

    A service rings its own app's actor by name: ``actors.py`` imports the services it calls, so
    the services cannot import ``actors.py`` back. Each app's ``AppConfig.ready()`` imports its
    ``actors`` module, so the actor is declared before any service runs.
    """
    return dramatiq.get_broker().get_actor(name)
