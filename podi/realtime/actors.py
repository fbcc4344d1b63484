"""Dramatiq actors of live events: webhook delivery attempts."""

from __future__ import annotations

import dramatiq

from podi.realtime import webhooks


@dramatiq.actor(actor_name=webhooks.DELIVERY_ACTOR, max_retries=0, time_limit=120_000)
def deliver_webhook(delivery_id: int) -> None:
    webhooks.webhook_attempt(delivery_id=delivery_id)
