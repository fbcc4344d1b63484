"""Errors of the generic HTTP model-API client."""

from integrations.executors.base import ExecutorError


class HttpExecutorError(ExecutorError):
    """A call to an HTTP model API failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, permanent: bool = False):
        super().__init__(message, permanent, details={"status": status})
        self.status = status
