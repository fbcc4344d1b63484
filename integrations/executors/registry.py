"""Which adapter runs a task on which kind of executor."""

from __future__ import annotations

from integrations.executors.base import ExecutorError
from integrations.executors.comfyui.run import ComfyUIRunner
from integrations.executors.coze.run import CozeRunner
from integrations.executors.http.run import HttpRunner


def run_adapter_for(executor):
    adapters = {"comfyui": ComfyUIRunner, "coze": CozeRunner, "http": HttpRunner}
    try:
        adapter = adapters[executor.kind]
    except KeyError:
        raise ExecutorError(
            f"No adapter for executor kind {executor.kind!r}", permanent=True
        ) from None
    return adapter.from_executor(executor)
