"""Running one task attempt on a generic JSON-over-HTTP model service.

The workflow version's definition is a request template (placeholders allowed anywhere)::

    {"method": "POST", "path": "/v1/images/generations", "headers": {…}, "query": {…},
     "body": {"prompt": "{{prompt}}"},
     "result": {"urls": ["data.*.url"], "base64": ["data.*.b64_json"], "mimeType": "image/png"}}

``path`` is relative to the executor's base URL (an absolute ``url`` must be on the same
origin). ``result`` says where the outputs are in the final response: URLs to copy into storage
and/or base64 payloads. Paths are dotted (``data.*.url``) or JSON pointers (``/data/*/url``).

The executor's config says how to authenticate and whether to poll::

    {"auth_header": "Authorization", "auth_scheme": "Bearer", "result_path": "result",
     "poll": {"url": "/jobs/{id}", "interval": 1, "max_polls": 600, "status_path": "status",
              "success_values": ["succeeded"], "failure_values": ["failed"],
              "result_path": "result"}}

Without ``poll`` the first response is final (OpenAI-compatible image APIs). With it, ``{name}``
in ``poll.url`` is taken from the first response's top-level fields and the URL is polled until
a success or failure value; a numeric status is reported as progress. The vendor key of the
executor (if any) is sent as ``<auth_header>: <auth_scheme> <secret>``. 4xx is permanent; 5xx,
429 and timeouts are transient. Media params become signed download URLs.
"""

from __future__ import annotations

import base64
import binascii
import string
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
    bytes_stream,
    download_opener,
    pointer_values,
)
from integrations.validation import executor_headers

INPUT_URL_TTL = 6 * 3600
DEFAULT_SUCCESS = ["succeeded", "success", "completed", "done"]
DEFAULT_FAILURE = ["failed", "error", "canceled", "cancelled"]


def _error(message: str, *, permanent: bool, code: str = "") -> ExecutorError:
    error = ExecutorError(message, permanent=permanent)
    if code:
        error.code = code
    return error


class HttpRunner:
    def __init__(self, executor):
        config = executor.config or {}
        self.executor = executor
        self.config = config
        self.base_url = executor.base_url.rstrip("/")
        self.timeout = httpx.Timeout(
            float(config.get("read_timeout") or settings.EXECUTOR_HTTP_TIMEOUT),
            connect=float(config.get("connect_timeout") or 5),
        )
        self.headers = executor_headers(config)
        self._run_headers: dict[str, str] = {}  # this run's key and template headers

    @classmethod
    def from_executor(cls, executor) -> HttpRunner:
        return cls(executor)

    def _auth_headers(self) -> dict[str, str]:
        key = api_key_pick(executor=self.executor)
        if key is None:
            return {}
        api_key_record_use(key=key)
        header = self.config.get("auth_header") or "Authorization"
        scheme = self.config.get("auth_scheme", "Bearer")
        return {header: f"{scheme} {key.reveal()}".strip()}

    def _same_origin(self, url: str) -> str:
        """A path on the executor for ``url`` (relative, or absolute on the same origin)."""
        if not url.startswith(("http://", "https://")):
            if ".." in url.split("?", 1)[0].split("/"):
                raise _error("Paths must not contain '..'.", permanent=True)
            return url if url.startswith("/") else f"/{url}"
        base, target = urlsplit(self.base_url), urlsplit(url)
        if (base.scheme, base.netloc) != (target.scheme, target.netloc):
            raise _error("URLs must be on the executor's base URL.", permanent=True)
        return url[len(f"{base.scheme}://{base.netloc}") :] or "/"

    def _send(self, client: httpx.Client, method: str, url: str, **kwargs) -> Any:
        try:
            response = client.request(method, url, headers=self._run_headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise _error(f"{url} timed out", permanent=False) from exc
        except httpx.HTTPError as exc:
            raise _error(f"{url} unreachable: {exc}", permanent=False) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise _error(f"{url} answered {response.status_code}", permanent=False)
        if response.status_code >= 400:
            raise _error(
                f"{url} answered {response.status_code}: {response.text[:300]}",
                permanent=True,
                code="EXECUTOR_REJECTED",
            )
        try:
            return response.json()
        except ValueError:
            raise _error(f"{url} sent non-JSON", permanent=False) from None

    def run(self, ctx: RunContext) -> RunResult:
        overrides = {item.param: item.url(INPUT_URL_TTL) for item in ctx.inputs}
        template = ctx.fill(overrides)
        if not isinstance(template, dict):
            raise _error("The HTTP definition must be an object.", permanent=True)
        method = str(template.get("method") or "POST").upper()
        target = self._same_origin(str(template.get("path") or template.get("url") or ""))
        self._run_headers = {
            **self._auth_headers(),
            **{str(k): str(v) for k, v in (template.get("headers") or {}).items()},
        }
        client = shared_client(
            self.executor, base_url=self.base_url, timeout=self.timeout, headers=self.headers
        )
        ctx.check()
        kwargs: dict[str, Any] = {"params": template.get("query") or None}
        if "body" in template and method != "GET":
            kwargs["json"] = template["body"]
        body = self._send(client, method, target, **kwargs)
        poll = self.config.get("poll")
        if poll:
            body = self._poll(client, ctx, poll, body)
        return self._outcome(template.get("result") or {}, body)

    def _poll(self, client: httpx.Client, ctx: RunContext, poll: dict, first: Any) -> Any:
        fields = first if isinstance(first, dict) else {}
        try:
            url = string.Formatter().vformat(str(poll["url"]), (), _Strict(fields))
        except KeyError as exc:
            raise _error(f"The first response has no {exc} for poll.url.", permanent=True) from None
        url = self._same_origin(url)
        if "id" in fields:
            ctx.save_external(str(fields["id"]), submitted=True)
        success = set(poll.get("success_values") or DEFAULT_SUCCESS)
        failure = set(poll.get("failure_values") or DEFAULT_FAILURE)
        interval = float(poll.get("interval") or 1.0)
        status_path = poll.get("status_path") or "status"
        for _ in range(int(poll.get("max_polls") or 100_000)):
            ctx.check()
            body = self._send(client, "GET", url)
            status = (pointer_values(body, status_path) or [None])[0]
            if status in success:
                return body
            if status in failure:
                detail = (pointer_values(body, "error") or [status])[0]
                raise _error(f"The job failed: {detail}", permanent=True, code="EXECUTION_ERROR")
            if isinstance(status, int | float) and not isinstance(status, bool):
                ctx.progress(float(status))
            time.sleep(interval)
        raise _error("The job did not finish within poll.max_polls.", permanent=False)

    def _outcome(self, spec: dict, body: Any) -> RunResult:
        mime = spec.get("mimeType")
        outputs: list[OutputFile] = []
        for path in spec.get("urls") or []:
            for index, url in enumerate(pointer_values(body, path)):
                if isinstance(url, str) and url.startswith(("http://", "https://")):
                    name = url.split("?", 1)[0].rsplit("/", 1)[-1] or f"output-{index}"
                    outputs.append(
                        OutputFile(
                            filename=name,
                            mime_type=mime,
                            open=download_opener(
                                url,
                                timeout=self.timeout.read or 60,
                                trusted_origin=self.base_url,
                            ),
                        )
                    )
        for path in spec.get("base64") or []:
            for value in pointer_values(body, path):
                try:
                    data = base64.b64decode(str(value), validate=True)
                except (binascii.Error, ValueError):
                    raise _error("An output is not valid base64.", permanent=True) from None
                extension = (mime or "application/octet-stream").split("/")[-1].split(";")[0]
                outputs.append(
                    OutputFile(
                        filename=f"output-{len(outputs)}.{extension}",
                        mime_type=mime,
                        open=lambda data=data: bytes_stream(data),
                    )
                )
        result_path = (self.config.get("poll") or {}).get("result_path") or self.config.get(
            "result_path"
        )
        result = body
        if result_path:
            found = pointer_values(body, result_path)
            result = found[0] if found else None
        if spec.get("base64") and isinstance(result, dict):
            result = {k: v for k, v in result.items() if k != "data"}
        return RunResult(outputs=outputs, result=result)

    def cancel(self, external_id: str, state: dict) -> None:
        """Generic services have no standard cancel; the task is released on our side."""


class _Strict(dict):
    def __missing__(self, key):
        raise KeyError(key)
