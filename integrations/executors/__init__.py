"""Executor adapters, one subpackage per provider (``comfyui``, ``coze``, ``http``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from integrations.executors.comfyui.client import ComfyUIClient
from integrations.executors.coze.client import CozeClient
from integrations.executors.http.client import HttpClient

if TYPE_CHECKING:
    from integrations.executors.base import ExecutorClient
    from integrations.models import Executor


def client_class_for(kind: str) -> type:
    return {"comfyui": ComfyUIClient, "coze": CozeClient, "http": HttpClient}[kind]


def client_for(executor: Executor) -> ExecutorClient:
    """The client of the executor's kind, built from its row."""
    return client_class_for(executor.kind).from_executor(executor)
