"""Running one task attempt as a Coze workflow (protocols.md §2).

The bound version's definition is ``{"workflowId", "parameters", "botId"?, "appId"?}`` with
placeholders; media params become signed download URLs. Modes (executor config ``mode``):
``sync`` (``POST /v1/workflow/run``) and ``async`` (``is_async`` + run-history polling).
``code != 0`` is permanent with Coze's message, except the codes Coze documents as retryable;
HTTP 5xx and timeouts are transient. URLs in the outputs are copied into PODI's storage.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from integrations.executors.base import ExecutorError
from integrations.executors.clients import shared_client
from integrations.executors.keys import api_key_pick, api_key_record_use
from integrations.executors.runtime import (
    OutputFile,
    RunContext,
    RunResult,
    download_opener,
)
from integrations.validation import executor_headers
from podi.urlguard import url_refusal

logger = logging.getLogger("podi.executors.coze")

RETRYABLE_CODES = {4009, 4013, 4020, 4102, 5000}
POLL_EVERY = 1.0
INPUT_URL_TTL = 6 * 3600


def _error(message: str, *, permanent: bool, code: str = "") -> ExecutorError:
    error = ExecutorError(message, permanent=permanent)
    if code:
        error.code = code
    return error


def _parse_data(value: Any) -> Any:
    """Coze returns outputs as JSON text, sometimes JSON inside JSON; parse defensively."""
    for _ in range(3):
        if not isinstance(value, str):
            return value
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return value


def _urls_in(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, str):
        if value.startswith(("http://", "https://")) and " " not in value:
            found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            found.extend(_urls_in(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_urls_in(item))
    return found


class CozeRunner:
    def __init__(self, executor):
        config = executor.config or {}
        self.executor = executor
        self.base_url = (
            config.get("base_url") or executor.base_url or "https://api.coze.cn"
        ).rstrip("/")
        self.mode = config.get("mode") or "sync"
        self.timeout = httpx.Timeout(
            float(config.get("read_timeout") or max(settings.EXECUTOR_HTTP_TIMEOUT, 100)),
            connect=float(config.get("connect_timeout") or 5),
        )
        self.headers = executor_headers(config)
        self._run_headers: dict[str, str] = {}  # this run's Authorization (a runner runs once)

    @classmethod
    def from_executor(cls, executor) -> CozeRunner:
        return cls(executor)

    def _token(self):
        key = api_key_pick(executor=self.executor)
        if key is None:
            raise _error(
                "No usable Coze API key for this executor.", permanent=True, code="NO_API_KEY"
            )
        api_key_record_use(key=key)
        return key.reveal()

    def _post(self, client: httpx.Client, path: str, body: dict) -> dict:
        try:
            response = client.post(path, json=body, headers=self._run_headers)
        except httpx.TimeoutException as exc:
            raise _error(f"Coze timed out on {path}", permanent=False) from exc
        except httpx.HTTPError as exc:
            raise _error(f"Coze unreachable on {path}: {exc}", permanent=False) from exc
        return self._envelope(response, path)

    def _get(self, client: httpx.Client, path: str) -> dict:
        try:
            response = client.get(path, headers=self._run_headers)
        except httpx.TimeoutException as exc:
            raise _error(f"Coze timed out on {path}", permanent=False) from exc
        except httpx.HTTPError as exc:
            raise _error(f"Coze unreachable on {path}: {exc}", permanent=False) from exc
        return self._envelope(response, path)

    def _envelope(self, response: httpx.Response, path: str) -> dict:
        logid = response.headers.get("X-Tt-Logid", "")
        if response.status_code >= 500 or response.status_code == 429:
            raise _error(
                f"Coze answered {response.status_code} on {path} (logid {logid})", permanent=False
            )
        try:
            body = response.json()
        except ValueError:
            raise _error(
                f"Coze sent non-JSON ({response.status_code}) on {path} (logid {logid})",
                permanent=response.status_code < 500,
            ) from None
        code = body.get("code", 0) if isinstance(body, dict) else -1
        if code != 0 or response.status_code >= 400:
            message = body.get("msg") if isinstance(body, dict) else str(body)
            raise _error(
                f"Coze error {code}: {message} (logid {logid})",
                permanent=code not in RETRYABLE_CODES,
                code=f"COZE_{code}",
            )
        return body

    def run(self, ctx: RunContext) -> RunResult:
        overrides = {item.param: item.url(INPUT_URL_TTL) for item in ctx.inputs}
        definition = ctx.fill(overrides)
        if not isinstance(definition, dict) or not definition.get("workflowId"):
            raise _error("The Coze workflow definition has no workflowId.", permanent=True)
        workflow_id = str(definition["workflowId"])
        body: dict[str, Any] = {
            "workflow_id": workflow_id,
            "parameters": definition.get("parameters") or {},
        }
        for source, target in (("botId", "bot_id"), ("appId", "app_id")):
            if definition.get(source):
                body[target] = str(definition[source])
        self._run_headers = {"Authorization": f"Bearer {self._token()}"}
        client = shared_client(
            self.executor, base_url=self.base_url, timeout=self.timeout, headers=self.headers
        )
        if ctx.state.get("submitted") and ctx.external_id:
            data = self._poll(client, ctx, workflow_id, ctx.external_id)
        elif self.mode == "async":
            answer = self._post(client, "/v1/workflow/run", {**body, "is_async": True})
            execute_id = str(answer.get("execute_id") or "")
            if not execute_id:
                raise _error("Coze gave no execute_id for an async run.", permanent=False)
            ctx.save_external(execute_id, submitted=True, workflowId=workflow_id)
            data = self._poll(client, ctx, workflow_id, execute_id)
        else:
            ctx.check()
            answer = self._post(client, "/v1/workflow/run", body)
            if answer.get("execute_id"):
                ctx.save_external(str(answer["execute_id"]), workflowId=workflow_id)
            data = _parse_data(answer.get("data"))
        result = {"data": data}
        allowed_host = urlsplit(self.base_url).hostname
        outputs = []
        for index, url in enumerate(_urls_in(data)):
            name = urlsplit(url).path.rsplit("/", 1)[-1] or f"output-{index}"
            if urlsplit(url).hostname != allowed_host:
                if url_refusal(url):
                    continue
            outputs.append(
                OutputFile(
                    filename=name,
                    kind="file",
                    open=download_opener(
                        url, timeout=self.timeout.read or 60, trusted_origin=self.base_url
                    ),
                )
            )
        return RunResult(outputs=outputs, result=result)

    def _poll(
        self, client: httpx.Client, ctx: RunContext, workflow_id: str, execute_id: str
    ) -> Any:
        delay = POLL_EVERY
        while True:
            ctx.check()
            answer = self._get(client, f"/v1/workflows/{workflow_id}/run_histories/{execute_id}")
            history = (answer.get("data") or [{}])[0]
            status = history.get("execute_status")
            if status == "Success":
                data = _parse_data(history.get("output"))
                # Run history wraps the End node's output as {"Output": "<json>"}.
                if isinstance(data, dict) and set(data) == {"Output"}:
                    data = _parse_data(data["Output"])
                return data
            if status == "Fail":
                raise _error(
                    f"Coze run failed: {history.get('error_code')} {history.get('error_message')}",
                    permanent=True,
                    code="COZE_RUN_FAILED",
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def cancel(self, external_id: str, state: dict) -> None:
        """Coze has no cancel API for workflow runs; the task is released on our side."""
        logger.info("Coze run %s cannot be canceled remotely; ignoring its result", external_id)
