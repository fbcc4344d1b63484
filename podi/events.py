"""Side effects after commit: ``enqueue_on_commit`` sends an actor once the transaction commits.

Events have an app of their own: ``podi.realtime.events.emit`` (docs/adr/0006-live-events.md).
"""

from __future__ import annotations

from typing import Any

import dramatiq
from django.db import transaction


def enqueue_on_commit(actor, *args: Any, using: str = "default", **options: Any) -> None:
    """Send ``actor`` after the current transaction commits (immediately outside one)."""
    if options:
        transaction.on_commit(lambda: actor.send_with_options(args=args, **options), using=using)
    else:
        transaction.on_commit(lambda: actor.send(*args), using=using)


def actor_named(name: str) -> dramatiq.Actor:
    """The actor declared under ``name``.

    A service rings its own app's actor by name: ``actors.py`` imports the services it calls, so
    the services cannot import ``actors.py`` back. Each app's ``AppConfig.ready()`` imports its
    ``actors`` module, so the actor is declared before any service runs.
    """
    return dramatiq.get_broker().get_actor(name)
