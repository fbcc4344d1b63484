"""Running task attempts on a ComfyUI server (protocols.md §1.10 rules).

1. Inputs go up with ``/upload/image`` into a per-task subfolder; the workflow's media params
   take the stored ``subfolder/name``.
2. The filled API-format graph gets per-attempt ``filename_prefix`` values (identical graphs are
   served from cache otherwise), the session's ``client_id`` and a client-chosen ``prompt_id``,
   saved in the database *before* ``POST /prompt`` so a resume can find the run.
3. Following is the session's job (``session.py``): one ``/ws`` per server and process drives
   progress and tells when a prompt ended; ``/history/{prompt_id}`` decides the outcome. A
   prompt that is in neither ``/history`` nor ``/queue`` for a grace period is lost (a
   restarted server), never done.
4. Every output a node reports is fetched with ``/view`` and streamed to the caller.

HTTP: the calls made for every prompt (``/prompt``, ``/history``, ``/queue``, ``/view``,
``/interrupt``) go through one urllib3 connection pool per runner, which a session shares; it
costs half the CPU of an httpx client per request (docs/adr/0033-comfyui-calls-on-urllib3.md).
Uploads keep httpx, which streams a multipart body of unknown length.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import mimetypes
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import urllib3
from django.conf import settings
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import NewConnectionError, ReadTimeoutError
from urllib3.exceptions import TimeoutError as TransportTimeout
from websockets.sync.client import connect as ws_connect

from integrations.executors.base import ExecutorError
from integrations.executors.runtime import (
    IterStream,
    OutputFile,
    RunContext,
    RunResult,
    ssl_context,
)
from integrations.validation import executor_headers

logger = logging.getLogger("podi.executors.comfyui")

FILE_KEYS = ("images", "gifs", "videos", "video", "audio", "files", "meshes", "3d")
POLL_EVERY = 1.0
LOST_AFTER = 5.0  # seconds absent from both queue and history before a prompt counts as lost
CONFIRM_STALE = 30.0  # seconds a /history confirmation may take before the prompt is polled


def executor_error(message: str, *, permanent: bool, code: str = "") -> ExecutorError:
    error = ExecutorError(message, permanent=permanent)
    if code:
        error.code = code
    return error


def transport_error(exc: TransportError, path: str) -> ExecutorError:
    """A retryable error for a request that failed below HTTP (connection, timeout, protocol)."""
    if isinstance(exc, TransportTimeout) and not isinstance(exc, NewConnectionError):
        return executor_error(f"ComfyUI timed out on {path}: {exc}", permanent=False)
    return executor_error(f"ComfyUI unreachable on {path}: {exc}", permanent=False)


def _node_error_message(body: Any) -> str:
    """A readable message from a ComfyUI 400 body (built from node_errors, as §1.3 advises)."""
    if not isinstance(body, dict):
        return str(body)[:500]
    parts = []
    for node_id, info in (body.get("node_errors") or {}).items():
        if not isinstance(info, dict):
            continue
        for err in info.get("errors") or []:
            detail = err.get("details") or ""
            parts.append(
                f"node {node_id} ({info.get('class_type', '?')}): {err.get('message', '')}"
                + (f" [{detail}]" if detail else "")
            )
    if parts:
        return "; ".join(parts)[:2000]
    error = body.get("error")
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('message', '')}"[:2000]
    return json.dumps(body)[:500]


class ComfyUIRunner:
    def __init__(
        self,
        *,
        base_url: str,
        connect_timeout: float,
        read_timeout: float,
        headers: dict,
        lost_after: float = LOST_AFTER,
        poll_every: float = POLL_EVERY,
        confirm_stale: float = CONFIRM_STALE,
        api_prefix: str = "/api",
    ):
        self.base_url = base_url.rstrip("/")
        self.prefix = api_prefix.rstrip("/")
        # Paths sent on the pool: the base URL's own path (a ComfyUI behind a proxy) + prefix.
        self.root = urlsplit(self.base_url).path.rstrip("/") + self.prefix
        self.lost_after = lost_after
        self.poll_every = poll_every
        self.confirm_stale = confirm_stale
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.headers = dict(headers)
        self.json_headers = {**self.headers, "Content-Type": "application/json"}
        self.ws_base = (
            "ws" + self.base_url[4:] if self.base_url.startswith("http") else self.base_url
        )
        self.client: urllib3.HTTPConnectionPool | None = None

    @classmethod
    def from_executor(cls, executor) -> ComfyUIRunner:
        config = executor.config or {}
        return cls(
            base_url=executor.base_url,
            connect_timeout=float(config.get("connect_timeout") or 5),
            read_timeout=float(config.get("read_timeout") or settings.EXECUTOR_HTTP_TIMEOUT),
            headers=executor_headers(config),
            lost_after=float(config.get("lost_after") or LOST_AFTER),
            poll_every=float(config.get("poll_every") or POLL_EVERY),
            confirm_stale=float(config.get("confirm_stale") or CONFIRM_STALE),
            api_prefix=str(config.get("api_prefix", "/api")),
        )

    # --- HTTP ----------------------------------------------------------------------------

    def _pool(self, maxsize: int) -> urllib3.HTTPConnectionPool:
        parts = urlsplit(self.base_url)
        options: dict[str, Any] = {
            "host": parts.hostname or "",
            "port": parts.port,
            "maxsize": maxsize,
            "block": False,
            "timeout": self.timeout,
            "retries": False,  # no silent resend (a POST /prompt is made idempotent by its id)
            "headers": self.headers,
        }
        if parts.scheme == "https":
            return urllib3.HTTPSConnectionPool(**options, ssl_context=ssl_context())
        return urllib3.HTTPConnectionPool(**options)

    def open_client(self) -> urllib3.HTTPConnectionPool:
        """A connection pool that this runner uses from now on (a session shares it): as many
        keep-alive connections as requests run at once (worker and finisher threads)."""
        self.client = self._pool(maxsize=32)
        return self.client

    @contextlib.contextmanager
    def _http(self) -> Iterator[urllib3.HTTPConnectionPool]:
        if self.client is not None:
            yield self.client
            return
        pool = self._pool(maxsize=1)
        try:
            yield pool
        finally:
            pool.close()

    def _call(self, method: str, path: str, *, body: Any = None) -> urllib3.BaseHTTPResponse:
        """One request (with a JSON ``body`` when given); raises for no answer or a 5xx."""
        url = self.root + path
        try:
            with self._http() as pool:
                if body is None:
                    response = pool.request(method, url)
                else:
                    data = json.dumps(body).encode()
                    response = pool.request(method, url, body=data, headers=self.json_headers)
        except TransportError as exc:
            raise transport_error(exc, path) from exc
        if response.status >= 500:
            raise executor_error(f"ComfyUI answered {response.status} on {path}", permanent=False)
        return response

    def _json(self, body: bytes, path: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise executor_error(f"ComfyUI sent non-JSON on {path}", permanent=False) from None

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of ``prompt_id`` (None while it has not ended)."""
        response = self._call("GET", f"/history/{prompt_id}")
        if response.status != 200:
            raise executor_error(f"ComfyUI history answered {response.status}", permanent=False)
        body = self._json(response.data, "/history")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry or None

    def queued_ids(self) -> set[str]:
        """Prompt ids running or pending on the server (one ``GET /queue``)."""
        body = self._json(self._call("GET", "/queue").data, "/queue")
        found = set()
        for key in ("queue_running", "queue_pending"):
            for item in (body.get(key) or []) if isinstance(body, dict) else []:
                if isinstance(item, list) and len(item) > 1:
                    found.add(item[1])
        return found

    def open_socket(self, client_id: str):
        """A context manager connecting ``/ws`` as ``client_id`` (raises OSError,
        WebSocketException or TimeoutError when it cannot)."""
        return ws_connect(
            f"{self.ws_base}{self.prefix}/ws?{urlencode({'clientId': client_id})}",
            open_timeout=self.connect_timeout or 5,
            close_timeout=1,
            max_size=None,
            additional_headers=self.headers or None,
            legacy=False,
        )

    # --- Submit --------------------------------------------------------------------------

    def prepare(self, ctx: RunContext) -> dict:
        """Upload the inputs and return the filled graph with per-attempt filename prefixes."""
        overrides = self._upload(ctx) if ctx.inputs else {}
        graph = ctx.fill(overrides)
        if not isinstance(graph, dict) or not graph:
            raise executor_error("The workflow is not an API-format graph.", permanent=True)
        prefix = f"podi/{ctx.task_id}-{ctx.attempt}"
        for node in graph.values():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if isinstance(inputs, dict) and isinstance(inputs.get("filename_prefix"), str):
                base = inputs["filename_prefix"].replace("\\", "/").split("/")[-1] or "out"
                inputs["filename_prefix"] = f"{prefix}/{base}"
        return graph

    def _upload(self, ctx: RunContext) -> dict[str, str]:
        """``POST /upload/image`` for every input, streamed from storage (httpx: a multipart
        body of unknown length); the params' values become the stored ``subfolder/name``."""
        subfolder = f"podi/{ctx.task_id}"
        overrides: dict[str, str] = {}
        timeout = httpx.Timeout(self.read_timeout, connect=self.connect_timeout)
        with httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=self.headers, verify=ssl_context()
        ) as client:
            for item in ctx.inputs:
                name = item.object_key.rsplit("/", 1)[-1]
                mime = item.mime_type or "application/octet-stream"
                with item.open() as stream:
                    try:
                        response = client.post(
                            f"{self.prefix}/upload/image",
                            files={"image": (name, stream, mime)},
                            data={"subfolder": subfolder, "type": "input", "overwrite": "true"},
                        )
                    except httpx.TimeoutException as exc:
                        raise executor_error(
                            f"ComfyUI timed out on /upload/image: {exc}", permanent=False
                        ) from exc
                    except httpx.HTTPError as exc:
                        raise executor_error(
                            f"ComfyUI unreachable on /upload/image: {exc}", permanent=False
                        ) from exc
                if response.status_code != 200:
                    raise executor_error(
                        f"ComfyUI refused the upload of {name}: {response.status_code} "
                        f"{response.text[:200]}",
                        permanent=response.status_code < 500,
                    )
                stored = self._json(response.content, "/upload/image")
                folder = stored.get("subfolder") or ""
                overrides[item.param] = f"{folder}/{stored['name']}" if folder else stored["name"]
        return overrides

    def submit(self, ctx: RunContext, graph: dict, client_id: str) -> str:
        """``POST /prompt`` with a prompt id saved first (idempotent submit, §1.10 rule 1).

        Nothing is saved after an accepted ``POST``: an attempt resumed with a saved prompt id
        asks ComfyUI whether it has that prompt (``knows``) before submitting again."""
        prompt_id = str(uuid.uuid4())
        ctx.save_external(prompt_id, clientId=client_id, submitted=False, nodes=list(graph))
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        try:
            response = self._call("POST", "/prompt", body=body)
        except ExecutorError as exc:
            if not isinstance(exc.__cause__, ReadTimeoutError):
                raise
            # Sent, no answer: it may have been queued anyway. Look before resubmitting
            # (§1.10 rule 1).
            if prompt_id in self.queued_ids() or self.history(prompt_id):
                ctx.save_external(prompt_id, clientId=client_id, submitted=True, nodes=list(graph))
                return prompt_id
            raise
        answer = self._json(response.data, "/prompt")
        if response.status != 200:
            raise executor_error(
                _node_error_message(answer), permanent=True, code="WORKFLOW_REJECTED"
            )
        if answer.get("node_errors"):
            # 200 with node_errors: some outputs were silently dropped. Treat as a failure.
            self.cancel(prompt_id, {})
            raise executor_error(
                _node_error_message(answer), permanent=True, code="WORKFLOW_REJECTED"
            )
        return prompt_id

    def knows(self, prompt_id: str) -> bool:
        """Whether ComfyUI has ``prompt_id``: queued, running, or in its history."""
        return prompt_id in self.queued_ids() or self.history(prompt_id) is not None

    # --- Outcome -------------------------------------------------------------------------

    def lost_error(self, prompt_id: str) -> ExecutorError:
        return executor_error(
            f"ComfyUI no longer knows prompt {prompt_id} (restarted or deleted).",
            permanent=False,
            code="EXECUTOR_LOST",
        )

    def outcome(self, ctx: RunContext, prompt_id: str, entry: dict) -> RunResult:
        """The run's result from its ``/history`` entry (raises for a failed prompt)."""
        status = entry.get("status") or {}
        messages = status.get("messages") or []
        if status.get("status_str") != "success":
            for name, data in messages:
                if name == "execution_error":
                    raise executor_error(
                        f"{data.get('node_type', 'node')} {data.get('node_id', '')}: "
                        f"{data.get('exception_type', '')}: {data.get('exception_message', '')}".strip(),
                        permanent=True,
                        code="EXECUTION_ERROR",
                    )
                if name == "execution_interrupted":
                    ctx.check()  # canceled by us → RunStopped; otherwise someone else interrupted
                    raise executor_error("ComfyUI interrupted the prompt.", permanent=False)
            raise executor_error("ComfyUI reported the prompt as failed.", permanent=True)
        declared = {str(n) for n in getattr(ctx, "outputs_declared", None) or []}
        outputs: list[OutputFile] = []
        for node_id, ui in (entry.get("outputs") or {}).items():
            outputs += self.output_files(str(node_id), ui, declared)
        return RunResult(outputs=outputs, result={"promptId": prompt_id})

    def output_files(self, node_id: str, ui: Any, declared: set[str]) -> list[OutputFile]:
        """The outputs one node reports (its ``ui``: in ``/history``, or in the ``executed``
        socket message as soon as the node ran), those of ``declared`` nodes only when any
        are declared; a ``temp`` file (a preview) only when declared."""
        if (declared and node_id not in declared) or not isinstance(ui, dict):
            return []
        outputs: list[OutputFile] = []
        for key, items in ui.items():
            if key == "text":
                for index, text in enumerate(items if isinstance(items, list) else [items]):
                    outputs.append(
                        OutputFile(
                            filename=f"text-{index}.txt",
                            node_id=node_id,
                            kind="text",
                            text=str(text),
                            ref=(node_id, key, index),
                        )
                    )
                continue
            if key not in FILE_KEYS and not (
                isinstance(items, list) and items and isinstance(items[0], dict)
            ):
                continue
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, dict) or not item.get("filename"):
                    continue
                if item.get("type") == "temp" and not declared:
                    continue
                outputs.append(self._output_file(node_id, key, item))
        return outputs

    def _output_file(self, node_id: str, key: str, item: dict) -> OutputFile:
        query = {
            "filename": item["filename"],
            "subfolder": item.get("subfolder") or "",
            "type": item.get("type") or "output",
        }
        mime = mimetypes.guess_type(item["filename"])[0]

        url = f"{self.root}/view?{urlencode(query)}"

        @contextlib.contextmanager
        def opener() -> Iterator[io.RawIOBase]:
            with self._http() as pool:
                try:
                    response = pool.request("GET", url, preload_content=False)
                except TransportError as exc:
                    raise transport_error(exc, "/view") from exc
                try:
                    if response.status != 200:
                        raise executor_error(
                            f"ComfyUI /view answered {response.status} for {item['filename']}",
                            permanent=response.status == 404,
                        )
                    yield io.BufferedReader(IterStream(response.stream(64 * 1024)))
                except TransportError as exc:
                    raise executor_error(
                        f"Downloading {item['filename']} failed: {exc}", permanent=False
                    ) from exc
                finally:
                    if not response.isclosed():  # not read to its end: the connection is not
                        response.close()  # reused (its next answer would start mid-body)
                    response.release_conn()

        kind = {"images": "image", "gifs": "image", "audio": "audio"}.get(
            key, "video" if "video" in key else "file"
        )
        return OutputFile(
            filename=item["filename"],
            node_id=node_id,
            mime_type=mime,
            kind=kind,
            open=opener,
            ref=(node_id, key, query["filename"], query["subfolder"], query["type"]),
        )

    # --- Cancel and lookup -----------------------------------------------------------------

    def cancel(self, external_id: str, state: dict) -> None:
        """Delete the prompt if still pending, interrupt it if running (§1.5 recipe)."""
        if not external_id:
            return
        self._call("POST", "/queue", body={"delete": [external_id]})
        self._call("POST", "/interrupt", body={"prompt_id": external_id})
