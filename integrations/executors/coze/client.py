"""Coze open-API client: health. See protocols.md §2.

The base URL is the executor's ``config.base_url`` when set, else its ``base_url``
(``https://api.coze.cn`` in China, ``https://api.coze.com`` elsewhere). The token is the
executor's first usable vendor API key (``api_key_pick``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from integrations.executors.base import (
    BaseHttpClient,
    ExecutorError,
    HealthRequirements,
    HealthResult,
)
from integrations.executors.coze.errors import (
    AUTH_CODES,
    EXECUTION_NOT_FOUND_CODE,
    NOT_FOUND_CODE,
    CozeError,
)
from integrations.executors.keys import api_key_pick

if TYPE_CHECKING:
    from integrations.models import Executor, VendorApiKey

#: A run id that never exists: asking for its history proves the token works and costs no run.
PROBE_EXECUTE_ID = "0"
MAX_PROBED_WORKFLOWS = 10


class CozeClient(BaseHttpClient):
    def __init__(
        self,
        *,
        token: str | None,
        mode: str = "sync",
        health_probe: bool = True,
        api_key: VendorApiKey | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.token = token
        self.mode = mode
        self.health_probe = health_probe
        self.api_key = api_key

    @classmethod
    def from_executor(
        cls, executor: Executor, *, api_key: VendorApiKey | None = None
    ) -> CozeClient:
        config = executor.config or {}
        key = api_key or api_key_pick(executor=executor)
        kwargs = cls._common_kwargs(executor)
        kwargs["base_url"] = config.get("base_url") or executor.base_url
        return cls(
            token=key.reveal() if key else None,
            api_key=key,
            mode=str(config.get("mode", "sync")),
            health_probe=bool(config.get("health_probe", True)),
            **kwargs,
        )

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _envelope(self, method: str, path: str, **kwargs: Any) -> dict:
        """Call a ``/v1`` route; answer the envelope when ``code == 0``, else raise CozeError."""
        response = self._request(method, path, headers=self._auth_headers(), **kwargs)
        logid = response.headers.get("X-Tt-Logid", "")
        if response.status_code != 200:
            raise CozeError(
                f"{method} {path} answered HTTP {response.status_code}: "
                f"{response.text[:120].strip()!r}",
                code=response.status_code,
                logid=logid,
                permanent=400 <= response.status_code < 500 and response.status_code != 429,
            )
        body = self._json(response, what=f"{method} {path}")
        if not isinstance(body, dict) or "code" not in body:
            raise CozeError(f"{method} {path} did not answer a Coze envelope.", logid=logid)
        code = body.get("code")
        logid = logid or str((body.get("detail") or {}).get("logid", ""))
        if code != 0:
            raise CozeError.from_envelope(int(code), str(body.get("msg", "")), logid)
        return body

    def run_history(self, workflow_id: str, execute_id: str) -> dict:
        return self._envelope("GET", f"/v1/workflows/{workflow_id}/run_histories/{execute_id}")

    def _probe(self, workflow_id: str) -> str | None:
        """None when the token works for this workflow, else the reason it does not."""
        try:
            self.run_history(workflow_id, PROBE_EXECUTE_ID)
        except CozeError as exc:
            if exc.code == EXECUTION_NOT_FOUND_CODE:
                return None
            if exc.code in AUTH_CODES:
                return f"Coze rejected the API key: {exc.message}"
            if exc.code == NOT_FOUND_CODE and workflow_id != PROBE_EXECUTE_ID:
                return f"Coze workflow {workflow_id} was not found or is not published."
            if exc.code == NOT_FOUND_CODE:
                return None
            return exc.message
        except ExecutorError as exc:
            return exc.message
        return None

    def health(self, *, requirements: HealthRequirements | None = None) -> HealthResult:
        requirements = requirements or HealthRequirements()
        workflow_ids = sorted(requirements.workflow_ids)
        details: dict[str, Any] = {"mode": self.mode, "workflowIds": workflow_ids}
        if not self.token:
            return HealthResult.unhealthy(
                "No usable API key: link an active, unexpired Coze key with quota left.", **details
            )
        if self.api_key is not None:
            details["apiKey"] = self.api_key.masked
        if not self.health_probe:
            return HealthResult.healthy(probe="disabled", **details)
        for workflow_id in workflow_ids[:MAX_PROBED_WORKFLOWS] or [PROBE_EXECUTE_ID]:
            reason = self._probe(workflow_id)
            if reason:
                return HealthResult.unhealthy(reason, **details)
        if not workflow_ids:
            details["note"] = "No workflow is bound to this executor yet; only the key was checked."
        return HealthResult.healthy(**details)
