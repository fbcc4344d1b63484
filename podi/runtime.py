"""Runs the Dramatiq worker inside this process (embedded mode and ``manage.py up``)."""

from __future__ import annotations

import importlib
import importlib.util

import dramatiq
from django.apps import apps


def import_actor_modules() -> list[str]:
    """Import ``<app>.actors`` for every installed app that has one, so actors are declared."""
    loaded = []
    for config in apps.get_app_configs():
        module = f"{config.name}.actors"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
            loaded.append(module)
    return loaded


def start_worker(threads: int) -> dramatiq.Worker:
    import_actor_modules()
    worker = dramatiq.Worker(dramatiq.get_broker(), worker_threads=threads, worker_timeout=200)
    worker.start()
    return worker
