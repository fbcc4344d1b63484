"""ComfyUI-specific errors."""

from integrations.executors.base import ExecutorError


class ComfyUIError(ExecutorError):
    """A ComfyUI call failed (transport, status, or an answer of the wrong shape)."""


class ComfyUINodeMissing(ComfyUIError):
    """The server lacks node classes a workflow needs (install the custom nodes). Permanent."""

    def __init__(self, missing: list[str]):
        super().__init__(
            f"Node class(es) not installed on this ComfyUI: {', '.join(missing)}. Install the "
            "custom nodes that provide them, then restart ComfyUI.",
            permanent=True,
            details={"missingNodeClasses": missing},
        )
        self.missing = missing
