"""Generic HTTP model-API client: health through the configured ``health_url``.

``config.health_url`` is absolute, or a path relative to the executor's ``base_url``. Any 2xx
answer is healthy. Without a health URL the executor's health stays ``unknown`` (still
dispatchable). Authentication: the executor's first usable vendor key is sent as
``<auth_header>: <auth_scheme> <secret>`` (default ``Authorization: Bearer …``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from integrations.executors.base import (
    BaseHttpClient,
    ExecutorError,
    HealthRequirements,
    HealthResult,
)
from integrations.executors.keys import api_key_pick

if TYPE_CHECKING:
    from integrations.models import Executor, VendorApiKey


class HttpClient(BaseHttpClient):
    def __init__(
        self,
        *,
        health_url: str = "",
        token: str | None = None,
        auth_header: str = "Authorization",
        auth_scheme: str = "Bearer",
        api_key: VendorApiKey | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.health_url = health_url
        self.token = token
        self.auth_header = auth_header
        self.auth_scheme = auth_scheme
        self.api_key = api_key

    @classmethod
    def from_executor(
        cls, executor: Executor, *, api_key: VendorApiKey | None = None
    ) -> HttpClient:
        config = executor.config or {}
        key = api_key or api_key_pick(executor=executor)
        return cls(
            health_url=str(config.get("health_url") or ""),
            token=key.reveal() if key else None,
            auth_header=str(config.get("auth_header") or "Authorization"),
            auth_scheme=str(config.get("auth_scheme", "Bearer")),
            api_key=key,
            **cls._common_kwargs(executor),
        )

    def auth_headers(self) -> dict[str, str]:
        if not self.token:
            return {}
        value = f"{self.auth_scheme} {self.token}" if self.auth_scheme else self.token
        return {self.auth_header: value}

    def health(self, *, requirements: HealthRequirements | None = None) -> HealthResult:
        if not self.health_url:
            return HealthResult.unknown("No health URL is configured (config.health_url).")
        url = self.url_for(
            self.health_url if "://" in self.health_url else "/" + self.health_url.lstrip("/")
        )
        try:
            response = self._request("GET", url, headers=self.auth_headers())
        except ExecutorError as exc:
            return HealthResult.unhealthy(exc.message, url=url)
        if 200 <= response.status_code < 300:
            return HealthResult.healthy(url=url, status=response.status_code)
        return HealthResult.unhealthy(
            f"GET {url} answered HTTP {response.status_code}: {response.text[:120].strip()!r}",
            url=url,
            status=response.status_code,
        )
