"""Where events go after commit: the WebSocket fan-out and webhooks (see the realtime issue)."""


def register_sinks() -> None:
    """Register the post-commit event sinks with ``podi.events``."""
