"""Running one task attempt on a ComfyUI server (protocols.md §1.10 rules).

1. Inputs go up with ``/upload/image`` into a per-task subfolder; the workflow's media params
   take the stored ``subfolder/name``.
2. The filled API-format graph gets per-attempt ``filename_prefix`` values (identical graphs are
   served from cache otherwise), a ``client_id`` and a client-chosen ``prompt_id``, saved in the
   database *before* ``POST /prompt`` so a resume can find the run.
3. ``/ws`` events drive progress; they are hints only. Completion is decided by
   ``/history/{prompt_id}``, polled on a back-off and whenever the socket says a run ended or
   the socket drops. A prompt that is in neither ``/history`` nor ``/queue`` for a grace
   period is lost (a restarted server), never done.
4. Every output a node reports is fetched with ``/view`` and streamed to the caller.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import mimetypes
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
from django.conf import settings
from websockets.exceptions import WebSocketException
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


def executor_error(message: str, *, permanent: bool, code: str = "") -> ExecutorError:
    error = ExecutorError(message, permanent=permanent)
    if code:
        error.code = code
    return error


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
        api_prefix: str = "/api",
    ):
        self.base_url = base_url.rstrip("/")
        self.prefix = api_prefix.rstrip("/")
        self.lost_after = lost_after
        self.poll_every = poll_every
        self.timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self.headers = headers
        self.ws_base = (
            "ws" + self.base_url[4:] if self.base_url.startswith("http") else self.base_url
        )

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
            api_prefix=str(config.get("api_prefix", "/api")),
        )

    # --- HTTP ----------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, timeout=self.timeout, headers=self.headers, verify=ssl_context()
        )

    def _call(self, client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise executor_error(f"ComfyUI timed out on {path}: {exc}", permanent=False) from exc
        except httpx.HTTPError as exc:
            raise executor_error(f"ComfyUI unreachable on {path}: {exc}", permanent=False) from exc
        if response.status_code >= 500:
            raise executor_error(
                f"ComfyUI answered {response.status_code} on {path}", permanent=False
            )
        return response

    def _json(self, response: httpx.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise executor_error(f"ComfyUI sent non-JSON on {path}", permanent=False) from None

    def history(self, client: httpx.Client, prompt_id: str) -> dict | None:
        response = self._call(client, "GET", f"{self.prefix}/history/{prompt_id}")
        if response.status_code != 200:
            raise executor_error(
                f"ComfyUI history answered {response.status_code}", permanent=False
            )
        body = self._json(response, "/history")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry or None

    def in_queue(self, client: httpx.Client, prompt_id: str) -> bool:
        body = self._json(self._call(client, "GET", f"{self.prefix}/queue"), "/queue")
        for key in ("queue_running", "queue_pending"):
            for item in body.get(key) or []:
                if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                    return True
        return False

    # --- Run -----------------------------------------------------------------------------

    def run(self, ctx: RunContext) -> RunResult:
        with self._client() as client, contextlib.ExitStack() as sockets:
            prompt_id = ctx.external_id if ctx.state.get("submitted") else ""
            client_id = ctx.state.get("clientId") or f"podi-{uuid.uuid4().hex}"
            socket = None
            if not prompt_id:
                graph = self._prepare(client, ctx)
                socket = self._open_socket(client_id, sockets)
                prompt_id = self._submit(client, ctx, graph, client_id)
            entry = self._follow(client, ctx, prompt_id, socket)
            return self._outcome(client, ctx, prompt_id, entry)

    def _prepare(self, client: httpx.Client, ctx: RunContext) -> dict:
        subfolder = f"podi/{ctx.task_id}"
        overrides: dict[str, Any] = {}
        for item in ctx.inputs:
            name = item.object_key.rsplit("/", 1)[-1]
            with item.open() as stream:
                response = self._call(
                    client,
                    "POST",
                    f"{self.prefix}/upload/image",
                    files={"image": (name, stream, item.mime_type or "application/octet-stream")},
                    data={"subfolder": subfolder, "type": "input", "overwrite": "true"},
                )
            if response.status_code != 200:
                raise executor_error(
                    f"ComfyUI refused the upload of {name}: {response.status_code} "
                    f"{response.text[:200]}",
                    permanent=response.status_code < 500,
                )
            stored = self._json(response, "/upload/image")
            folder = stored.get("subfolder") or ""
            overrides[item.param] = f"{folder}/{stored['name']}" if folder else stored["name"]
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

    def _open_socket(self, client_id: str, sockets: contextlib.ExitStack):
        try:
            return sockets.enter_context(
                ws_connect(
                    f"{self.ws_base}{self.prefix}/ws?{urlencode({'clientId': client_id})}",
                    open_timeout=self.timeout.connect or 5,
                    close_timeout=1,
                    max_size=None,
                    additional_headers=self.headers or None,
                    legacy=False,
                )
            )
        except (OSError, WebSocketException, TimeoutError) as exc:
            # Progress is a nicety; completion is decided by /history. Go on without a socket.
            logger.warning("ComfyUI websocket unavailable at %s: %s", self.ws_base, exc)
            return None

    def _submit(self, client: httpx.Client, ctx: RunContext, graph: dict, client_id: str) -> str:
        prompt_id = str(uuid.uuid4())
        ctx.save_external(prompt_id, clientId=client_id, submitted=False)
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        try:
            response = client.post(f"{self.prefix}/prompt", json=body)
        except httpx.TimeoutException:
            # It may have been queued anyway: look before resubmitting (§1.10 rule 1).
            if self.in_queue(client, prompt_id) or self.history(client, prompt_id):
                ctx.save_external(prompt_id, clientId=client_id, submitted=True, nodes=list(graph))
                return prompt_id
            raise executor_error("ComfyUI timed out on /prompt", permanent=False) from None
        except httpx.HTTPError as exc:
            raise executor_error(f"ComfyUI unreachable on /prompt: {exc}", permanent=False) from exc
        if response.status_code >= 500:
            raise executor_error(
                f"ComfyUI answered {response.status_code} on /prompt", permanent=False
            )
        answer = self._json(response, "/prompt")
        if response.status_code != 200:
            raise executor_error(
                _node_error_message(answer), permanent=True, code="WORKFLOW_REJECTED"
            )
        if answer.get("node_errors"):
            # 200 with node_errors: some outputs were silently dropped. Treat as a failure.
            self.cancel(prompt_id, {})
            raise executor_error(
                _node_error_message(answer), permanent=True, code="WORKFLOW_REJECTED"
            )
        ctx.save_external(prompt_id, clientId=client_id, submitted=True, nodes=list(graph))
        return prompt_id

    def _follow(self, client: httpx.Client, ctx: RunContext, prompt_id: str, socket) -> dict:
        total_nodes = max(len(ctx.state.get("nodes") or []) or 1, 1)
        done_nodes: set[str] = set()
        next_poll = time.monotonic() + self.poll_every
        absent_since: float | None = None
        while True:
            ctx.check()
            finished_hint = False
            if socket is not None:
                try:
                    raw = socket.recv(timeout=0.5)
                except TimeoutError:
                    raw = None
                except (WebSocketException, OSError):
                    socket = None  # dropped: completion now comes from history polling
                    raw = None
                if isinstance(raw, str):
                    finished_hint, total_nodes = self._on_message(
                        ctx, prompt_id, raw, done_nodes, total_nodes
                    )
            else:
                time.sleep(min(0.25, self.poll_every))
            if finished_hint or time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_every
                entry = self.history(client, prompt_id)
                if entry is not None:
                    return entry
                if self.in_queue(client, prompt_id):
                    absent_since = None
                elif absent_since is None:
                    absent_since = time.monotonic()
                elif time.monotonic() - absent_since > self.lost_after:
                    raise executor_error(
                        f"ComfyUI no longer knows prompt {prompt_id} (restarted or deleted).",
                        permanent=False,
                        code="EXECUTOR_LOST",
                    )

    def _on_message(
        self, ctx: RunContext, prompt_id: str, raw: str, done: set[str], total: int
    ) -> tuple[bool, int]:
        try:
            message = json.loads(raw)
        except ValueError:
            return False, total
        kind = message.get("type")
        data = message.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            return False, total
        if kind == "execution_cached":
            done.update(str(n) for n in data.get("nodes") or [])
        elif kind == "progress_state":
            nodes = data.get("nodes") or {}
            total = max(total, len(nodes))
            done.update(n for n, s in nodes.items() if (s or {}).get("state") == "finished")
        elif kind == "executing" and data.get("prompt_id") == prompt_id:
            if data.get("node") is None:
                return True, total
        elif kind == "executed" and data.get("node") is not None:
            done.add(str(data["node"]))
        elif kind == "progress" and data.get("max"):
            within = float(data.get("value", 0)) / float(data["max"])
            ctx.progress(100 * (len(done) + within) / max(total, 1), {"node": data.get("node")})
            return False, total
        elif kind in {"execution_success", "execution_error", "execution_interrupted"}:
            return True, total
        if kind in {"execution_cached", "progress_state", "executed"}:
            ctx.progress(100 * len(done) / max(total, 1))
        return False, total

    def _outcome(
        self, client: httpx.Client, ctx: RunContext, prompt_id: str, entry: dict
    ) -> RunResult:
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
            if declared and str(node_id) not in declared:
                continue
            if not isinstance(ui, dict):
                continue
            for key, items in ui.items():
                if key == "text":
                    for index, text in enumerate(items if isinstance(items, list) else [items]):
                        outputs.append(
                            OutputFile(
                                filename=f"text-{index}.txt",
                                node_id=str(node_id),
                                kind="text",
                                text=str(text),
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
                    outputs.append(self._output_file(str(node_id), key, item))
        return RunResult(outputs=outputs, result={"promptId": prompt_id})

    def _output_file(self, node_id: str, key: str, item: dict) -> OutputFile:
        query = {
            "filename": item["filename"],
            "subfolder": item.get("subfolder") or "",
            "type": item.get("type") or "output",
        }
        mime = mimetypes.guess_type(item["filename"])[0]

        @contextlib.contextmanager
        def opener() -> Iterator[io.RawIOBase]:
            with self._client() as client:
                try:
                    with client.stream("GET", f"{self.prefix}/view", params=query) as response:
                        if response.status_code != 200:
                            raise executor_error(
                                f"ComfyUI /view answered {response.status_code} for {item['filename']}",
                                permanent=response.status_code == 404,
                            )
                        yield io.BufferedReader(IterStream(response.iter_bytes(64 * 1024)))
                except httpx.HTTPError as exc:
                    raise executor_error(
                        f"Downloading {item['filename']} failed: {exc}", permanent=False
                    ) from exc

        kind = {"images": "image", "gifs": "image", "audio": "audio"}.get(
            key, "video" if "video" in key else "file"
        )
        return OutputFile(
            filename=item["filename"], node_id=node_id, mime_type=mime, kind=kind, open=opener
        )

    # --- Cancel and lookup -----------------------------------------------------------------

    def cancel(self, external_id: str, state: dict) -> None:
        """Delete the prompt if still pending, interrupt it if running (§1.5 recipe)."""
        if not external_id:
            return
        with self._client() as client:
            self._call(client, "POST", f"{self.prefix}/queue", json={"delete": [external_id]})
            self._call(client, "POST", f"{self.prefix}/interrupt", json={"prompt_id": external_id})
