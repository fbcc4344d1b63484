"""Real checks of what PODI depends on: database, channel layer, broker and storage."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import dramatiq
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import connections
from dramatiq.brokers.redis import RedisBroker

CHECK_TIMEOUT = 3.0


def check_database() -> None:
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        connection.close_if_unusable_or_obsolete()
        connection.close()
        raise


def check_channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")

    async def roundtrip() -> None:
        channel = await layer.new_channel("health.")
        await layer.send(channel, {"type": "health.probe"})
        message = await asyncio.wait_for(layer.receive(channel), CHECK_TIMEOUT)
        if message.get("type") != "health.probe":
            raise RuntimeError("channel layer returned another message")

    async_to_sync(roundtrip)()


def check_broker() -> None:
    broker = dramatiq.get_broker()
    if isinstance(broker, RedisBroker):  # DoorbellRedisBroker too
        broker.client.ping()
    elif type(broker).__name__ == "RabbitmqBroker":
        broker.channel  # noqa: B018 - opens (or reuses) a channel, raising when unreachable
    # The StubBroker lives in this process: if we are answering, it is up.


def check_storage() -> None:
    storage = default_storage
    if isinstance(storage, FileSystemStorage):
        os.makedirs(storage.location, exist_ok=True)
        if not os.access(storage.location, os.W_OK):
            raise RuntimeError(f"{storage.location} is not writable")
        return
    storage.exists(".health-probe")


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "channelLayer": check_channel_layer,
    "broker": check_broker,
    "storage": check_storage,
}


def run_checks() -> dict:
    results = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # every failure becomes a reported check, never a 500
            results[name] = {
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "latencyMs": round((time.perf_counter() - started) * 1000, 1),
            }
        else:
            results[name] = {
                "status": "ok",
                "latencyMs": round((time.perf_counter() - started) * 1000, 1),
            }
    healthy = all(item["status"] == "ok" for item in results.values())
    # The process that answered: with several web processes (WEB_CONCURRENCY) each has its own.
    return {"status": "ok" if healthy else "degraded", "pid": os.getpid(), "checks": results}
