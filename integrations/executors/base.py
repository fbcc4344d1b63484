"""What every executor client shares: errors that say whether they are permanent, health results,
and an httpx-based ``_request`` helper with timeouts from the executor's config.

A client is a class built from an ``Executor`` row (``XClient.from_executor(executor)``); it never
touches the database itself. Adding a provider starts by copying one of the subpackages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from django.conf import settings

from integrations.validation import executor_headers

if TYPE_CHECKING:
    from integrations.models import Executor


class ExecutorError(Exception):
    """A failed call to an executor. ``permanent`` errors must not be retried."""

    def __init__(self, message: str, permanent: bool = False, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.details = details or {}

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class HealthResult:
    status: str  # "healthy" | "unhealthy" | "unknown" (HealthStatus values)
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    # ComfyUI: every node class the server has (``/object_info``); None when not read.
    node_classes: frozenset[str] | None = None

    @classmethod
    def healthy(cls, **details: Any) -> HealthResult:
        return cls("healthy", "", details)

    @classmethod
    def unhealthy(cls, error: str, **details: Any) -> HealthResult:
        return cls("unhealthy", error, details)

    @classmethod
    def unknown(cls, error: str, **details: Any) -> HealthResult:
        return cls("unknown", error, details)


@dataclass(frozen=True)
class HealthRequirements:
    """What the workflows bound to an executor need from it (filled by the health service)."""

    node_classes: frozenset[str] = frozenset()
    workflow_ids: frozenset[str] = frozenset()


class ExecutorClient(Protocol):
    @classmethod
    def from_executor(cls, executor: Executor) -> ExecutorClient: ...

    def health(self, *, requirements: HealthRequirements | None = None) -> HealthResult: ...


def describe_http_failure(exc: Exception, url: str, timeout: float) -> str:
    """A sentence an operator can act on, for any failure of one HTTP call."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"Connecting to {url} timed out after {timeout:g} s."
    if isinstance(exc, httpx.TimeoutException):
        return f"{url} did not answer within {timeout:g} s."
    if isinstance(exc, httpx.ConnectError):
        return f"Cannot connect to {url}: {exc or 'connection refused'}."
    if isinstance(exc, httpx.HTTPError):
        return f"HTTP error talking to {url}: {exc.__class__.__name__}: {exc}"
    return f"{exc.__class__.__name__} talking to {url}: {exc}"


class BaseHttpClient:
    """httpx plumbing shared by the clients: base URL, extra headers, timeouts, ``_request``."""

    #: Prepended to every path given to ``_request`` (ComfyUI uses "/api").
    path_prefix = ""

    def __init__(
        self,
        *,
        base_url: str,
        headers: dict[str, str] | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        default = float(settings.EXECUTOR_HTTP_TIMEOUT)
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.read_timeout = float(read_timeout or default)
        self.connect_timeout = float(connect_timeout or min(default, self.read_timeout, 10.0))
        self.transport = transport

    @classmethod
    def _common_kwargs(cls, executor: Executor) -> dict[str, Any]:
        config = executor.config or {}
        connect, read = executor.timeout_config()
        return {
            "base_url": executor.base_url,
            "headers": executor_headers(config),
            "connect_timeout": connect,
            "read_timeout": read,
        }

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.read_timeout, connect=self.connect_timeout)

    def url_for(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}{self.path_prefix}{path}"

    def _client(self) -> httpx.Client:
        return httpx.Client(
            timeout=self.timeout,
            headers=self.headers,
            transport=self.transport,
            follow_redirects=False,
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One HTTP call. Transport failures become ``ExecutorError`` (transient); the caller
        judges the status code."""
        url = self.url_for(path)
        limit = timeout if timeout is not None else self.read_timeout
        try:
            with self._client() as client:
                return client.request(
                    method,
                    url,
                    headers=headers,
                    timeout=httpx.Timeout(limit, connect=min(self.connect_timeout, limit)),
                    **kwargs,
                )
        except httpx.HTTPError as exc:
            raise ExecutorError(describe_http_failure(exc, url, limit), permanent=False) from exc

    def _json(self, response: httpx.Response, *, what: str) -> Any:
        """The body as JSON, or an ``ExecutorError`` naming what was expected."""
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            snippet = response.text[:120].replace("\n", " ")
            raise ExecutorError(
                f"{what} answered HTTP {response.status_code} with something that is not JSON: "
                f"{snippet!r}",
                permanent=False,
            ) from None
