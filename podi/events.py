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


def _send_quietly(actor, args: tuple, options: dict) -> None:
    try:
        if options:
            actor.send_with_options(args=args, **options)
        else:
            actor.send(*args)
    except (
        dramatiq.errors.BrokerConnectionError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    ) as exc:
        logger.warning(
            "broker unreachable, %s not sent (the reconciler catches up): %s", actor, exc
        )


def actor_named(name: str) -> dramatiq.Actor:
    """The actor declared under ``name``.

    A service rings its own app's actor by name: ``actors.py`` imports the services it calls, so
    the services cannot import ``actors.py`` back. Each app's ``AppConfig.ready()`` imports its
    ``actors`` module, so the actor is declared before any service runs.
    """
    return dramatiq.get_broker().get_actor(name)
