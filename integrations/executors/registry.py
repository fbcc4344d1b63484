"""Which adapter runs a task on which kind of executor."""

from __future__ import annotations


def run_adapter_for(executor):
    from integrations.executors.comfyui.run import ComfyUIRunner
    from integrations.executors.coze.run import CozeRunner
    from integrations.executors.http.run import HttpRunner

    adapters = {"comfyui": ComfyUIRunner, "coze": CozeRunner, "http": HttpRunner}
    try:
        adapter = adapters[executor.kind]
    except KeyError:
        from integrations.executors.base import ExecutorError

        raise ExecutorError(
            f"No adapter for executor kind {executor.kind!r}", permanent=True
        ) from None
    return adapter.from_executor(executor)
