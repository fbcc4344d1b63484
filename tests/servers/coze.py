"""A Coze open-API test server (workflows) for PODI's tests, following protocols.md §2.

Usage::

    from tests.servers.coze import CozeTestServer, DEFAULT_WORKFLOW_ID

    with CozeTestServer(token="pat_test") as coze:
        r = httpx.post(coze.url + "/v1/workflow/run",
                       headers={"Authorization": "Bearer pat_test"},
                       json={"workflow_id": DEFAULT_WORKFLOW_ID, "parameters": {"prompt": "cat"}})
        outputs = json.loads(r.json()["data"])     # {"prompt": "cat", "image_url": ".../files/…png"}

Constructor: ``CozeTestServer(port=0, *, token="test-token", workflows=None)``; the base URL for
cozepy is ``coze.url`` (``Coze(auth=TokenAuth(token), base_url=coze.url)``).

Routes:
* ``POST /v1/workflow/run`` – sync (``data`` = JSON string of the outputs, ``execute_id``,
  ``debug_url``, ``usage``, ``detail.logid``) or ``is_async: true`` (``data: ""`` + ``execute_id``).
* ``GET /v1/workflows/{workflow_id}/run_histories/{execute_id}`` – ``data: [history]`` with
  ``execute_status`` ``Running`` → ``Success``/``Fail``; ``output`` double-encoded
  (``{"Output": "<json of outputs>"}`` as a string); unknown id → code 4314.
* ``POST /v1/workflow/stream_run`` – SSE (``id:``/``event:``/``data:`` blocks): Message events of a
  "Message" node, the End node's Message (``node_title: ""``, ``content`` = JSON of the outputs),
  then ``Done``; a failing workflow sends an ``Error`` event and ends. Request errors come back as
  JSON, not SSE.
* ``POST /v1/files/upload`` – multipart ``file`` → ``data: {id, bytes, created_at, file_name}``.
* ``GET /files/{name}`` – PNGs the fake workflows point at (``image_url``) and uploaded files.

Every ``/v1`` answer has the envelope ``{"code", "msg", ..., "detail": {"logid"}}`` and the header
``X-Tt-Logid``. Errors are HTTP 200 with ``code != 0`` (4100 bad token, 4200 unknown workflow,
4000 bad request incl. ``bot_id`` with ``app_id``, 4314 unknown execute id).

Knobs (attributes, settable any time):
``token``                  expected Bearer token (None = accept anything).
``workflows``              dict workflow_id -> spec. Spec: ``"echo"``/None (outputs = parameters
                           plus ``image_url`` of a PNG served here), a dict (static outputs), or a
                           callable ``fn(parameters) -> dict`` that may raise
                           :class:`CozeWorkflowError` (code, msg) to make the run fail.
                           Default: ``{DEFAULT_WORKFLOW_ID: "echo"}``.
``run_delay``              seconds a run takes (sync: before answering; async: minimum time in
                           Running; stream: spread between events).
``async_polls_before_done`` number of history polls answered ``Running`` before the result (1).
``business_error``         None | (code, msg): every /v1 call answers this envelope error.
``http_status_override``   None | int: every route answers this HTTP status with an HTML body.
``stream_message_chunks``  list of str: contents of the streamed "Message" node events.

Observations: ``.requests`` (base.py), ``.runs`` (execute_id -> dict workflow_id, parameters,
mode ("sync"|"async"|"stream"), status, outputs, error, polls, created), ``.uploads`` (dicts id,
file_name, bytes, data).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .base import LoopbackServer
from .comfyui import solid_png

__all__ = ["CozeTestServer", "CozeWorkflowError", "DEFAULT_WORKFLOW_ID"]

DEFAULT_WORKFLOW_ID = "7400000000000000001"


class CozeWorkflowError(Exception):
    """Raise from a workflow callable to make the run fail with this Coze error code."""

    def __init__(self, code: int = 720701013, msg: str = "workflow execution failed"):
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _logid() -> str:
    return time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(9).upper()


class CozeTestServer(LoopbackServer):
    def __init__(
        self,
        port: int = 0,
        *,
        token: str | None = "test-token",  # noqa: S107
        workflows: dict[str, Any] | None = None,
    ) -> None:
        self.token = token
        self.workflows: dict[str, Any] = (
            dict(workflows) if workflows is not None else {DEFAULT_WORKFLOW_ID: "echo"}
        )
        self.run_delay: float = 0.0
        self.async_polls_before_done: int = 1
        self.business_error: tuple[int, str] | None = None
        self.http_status_override: int | None = None
        self.stream_message_chunks: list[str] = ["working", " on it"]
        self.runs: dict[str, dict] = {}
        self.uploads: list[dict] = []
        self._ids = itertools.count(7490000000000000001)
        self._files: dict[str, tuple[bytes, str]] = {}
        super().__init__(port)

    def reset_state(self) -> None:
        # Coze itself is never "restarted" in tests; kill()/restart() keep the run records.
        pass

    # ------------------------------------------------------------------ helpers
    def _new_id(self) -> str:
        return str(next(self._ids))

    def debug_url(self, workflow_id: str, execute_id: str) -> str:
        return f"{self.url}/work_flow?execute_id={execute_id}&workflow_id={workflow_id}"

    def _envelope(self, code: int, msg: str, status: int = 200, **extra: Any) -> web.Response:
        logid = _logid()
        body = {"code": code, "msg": msg, **extra, "detail": {"logid": logid}}
        return web.json_response(body, status=status, headers={"X-Tt-Logid": logid})

    def _check(self, request: web.Request) -> web.Response | None:
        if self.business_error is not None:
            code, msg = self.business_error
            return self._envelope(code, msg)
        if self.token is not None:
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {self.token}":
                return self._envelope(
                    4100, "authentication is invalid. Please check your token and try again."
                )
        return None

    def _outputs(self, workflow_id: str, parameters: dict, execute_id: str) -> dict:
        spec = self.workflows.get(workflow_id)
        if spec is None or spec == "echo":
            name = f"{execute_id}.png"
            self._files[name] = (solid_png(64, 64, (0, 128, 255)), "image/png")
            return {**parameters, "image_url": f"{self.url}/files/{name}"}
        if callable(spec):
            return dict(spec(parameters))
        return dict(spec)

    @staticmethod
    def _params(body: dict) -> dict:
        p = body.get("parameters") or {}
        if isinstance(p, str):
            try:
                p = json.loads(p) if p else {}
            except ValueError:
                p = {}
        return p if isinstance(p, dict) else {}

    def _validate_run(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict) or not body.get("workflow_id"):
            return self._envelope(4000, "The requested parameter is invalid: workflow_id")
        if body.get("bot_id") and body.get("app_id"):
            return self._envelope(4000, "bot_id and app_id cannot be set at the same time")
        if body["workflow_id"] not in self.workflows:
            return self._envelope(
                4200,
                "Requested resource not found. Ensure that the resource you are trying "
                "to access exists. (workflow not found or not published)",
            )
        return None

    def _finish(self, run: dict) -> None:
        try:
            run["outputs"] = self._outputs(run["workflow_id"], run["parameters"], run["execute_id"])
            run["status"] = "Success"
        except CozeWorkflowError as e:
            run["status"], run["error"] = "Fail", (e.code, e.msg)
        run["updated"] = int(time.time())

    def _usage(self, run: dict) -> dict:
        return {"input_count": 0, "output_count": 0, "token_count": 0}

    # ------------------------------------------------------------------ app
    def extra_middlewares(self) -> list:
        return [self._override_middleware]

    @web.middleware
    async def _override_middleware(self, request: web.Request, handler: Any):
        if self.http_status_override:
            s = self.http_status_override
            return web.Response(
                status=s,
                text=f"<html><body><h1>{s}</h1>test override</body></html>",
                content_type="text/html",
            )
        return await handler(request)

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/workflow/run", self._run)
        app.router.add_post("/v1/workflow/stream_run", self._stream_run)
        app.router.add_get("/v1/workflows/{workflow_id}/run_histories/{execute_id}", self._history)
        app.router.add_post("/v1/files/upload", self._upload)
        app.router.add_get("/files/{name}", self._file)

    async def _json_body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    async def _run(self, request: web.Request) -> web.Response:
        err = self._check(request)
        if err is not None:
            return err
        body = await self._json_body(request)
        err = self._validate_run(body)
        if err is not None:
            return err
        wf = body["workflow_id"]
        eid = self._new_id()
        is_async = bool(body.get("is_async"))
        run = {
            "execute_id": eid,
            "workflow_id": wf,
            "parameters": self._params(body),
            "mode": "async" if is_async else "sync",
            "status": "Running",
            "outputs": None,
            "error": None,
            "polls": 0,
            "created": time.time(),
            "updated": int(time.time()),
            "ext": body.get("ext") or {},
            "bot_id": body.get("bot_id") or "0",
        }
        self.runs[eid] = run
        if is_async:
            return self._envelope(0, "", data="", execute_id=eid, debug_url=self.debug_url(wf, eid))
        if self.run_delay:
            await asyncio.sleep(self.run_delay)
        self._finish(run)
        if run["status"] == "Fail":
            code, msg = run["error"]
            return self._envelope(
                code, msg, data="", execute_id=eid, debug_url=self.debug_url(wf, eid)
            )
        return self._envelope(
            0,
            "",
            data=json.dumps(run["outputs"], ensure_ascii=False),
            execute_id=eid,
            debug_url=self.debug_url(wf, eid),
            usage=self._usage(run),
        )

    async def _history(self, request: web.Request) -> web.Response:
        err = self._check(request)
        if err is not None:
            return err
        wf = request.match_info["workflow_id"]
        eid = request.match_info["execute_id"]
        run = self.runs.get(eid)
        if run is None or run["workflow_id"] != wf:
            return self._envelope(4314, "execution record not found")
        run["polls"] += 1
        if run["status"] == "Running":
            elapsed = time.time() - run["created"]
            if run["polls"] > self.async_polls_before_done and elapsed >= self.run_delay:
                self._finish(run)
        status = run["status"]
        output, code, msg = "", "", ""
        if status == "Success":
            output = json.dumps(
                {"Output": json.dumps(run["outputs"], ensure_ascii=False)}, ensure_ascii=False
            )
        elif status == "Fail":
            code, msg = str(run["error"][0]), run["error"][1]
        hist = {
            "execute_id": eid,
            "bot_id": run["bot_id"],
            "connector_id": "1024",
            "connector_uid": str(run["ext"].get("user_id", "")),
            "execute_status": status,
            "run_mode": {"sync": 0, "stream": 1, "async": 2}[run["mode"]],
            "output": output,
            "error_code": code,
            "error_message": msg,
            "create_time": int(run["created"]),
            "update_time": run["updated"],
            "debug_url": self.debug_url(wf, eid),
            "usage": self._usage(run),
            "logid": _logid(),
            "is_output_trimmed": False,
            "node_execute_status": {},
            "token": "0",
            "cost": "0.00000",
        }
        return self._envelope(0, "Success", data=[hist])

    async def _stream_run(self, request: web.Request) -> web.StreamResponse:
        err = self._check(request)
        if err is not None:
            return err
        body = await self._json_body(request)
        err = self._validate_run(body)
        if err is not None:
            return err
        wf = body["workflow_id"]
        eid = self._new_id()
        run = {
            "execute_id": eid,
            "workflow_id": wf,
            "parameters": self._params(body),
            "mode": "stream",
            "status": "Running",
            "outputs": None,
            "error": None,
            "polls": 0,
            "created": time.time(),
            "updated": int(time.time()),
            "ext": body.get("ext") or {},
            "bot_id": body.get("bot_id") or "0",
        }
        self.runs[eid] = run
        logid = _logid()
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Tt-Logid": logid,
            }
        )
        await resp.prepare(request)
        counter = itertools.count()
        chunks = list(self.stream_message_chunks)
        step = self.run_delay / (len(chunks) + 1) if self.run_delay else 0.0

        async def emit(event: str, data: dict) -> None:
            block = (
                f"id: {next(counter)}\nevent: {event}\n"
                f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
            )
            await resp.write(block.encode())

        for i, chunk in enumerate(chunks):
            if step:
                await asyncio.sleep(step)
            await emit(
                "Message",
                {
                    "content": chunk,
                    "node_is_finish": i == len(chunks) - 1,
                    "node_seq_id": str(i),
                    "node_title": "Message",
                    "node_type": "Message",
                    "node_id": "100001",
                    "node_execute_uuid": f"{eid}-100001",
                    "ext": None,
                },
            )
        if step:
            await asyncio.sleep(step)
        self._finish(run)
        if run["status"] == "Fail":
            code, msg = run["error"]
            await emit("Error", {"error_code": code, "error_message": msg})
        else:
            await emit(
                "Message",
                {
                    "content": json.dumps(run["outputs"], ensure_ascii=False),
                    "node_is_finish": True,
                    "node_seq_id": "0",
                    "node_title": "",
                    "node_type": "End",
                    "node_id": "900001",
                    "node_execute_uuid": f"{eid}-900001",
                    "usage": self._usage(run),
                    "ext": None,
                    "cost": "0.00",
                    "token": 0,
                },
            )
            await emit("Done", {})
        await resp.write_eof()
        return resp

    async def _upload(self, request: web.Request) -> web.Response:
        err = self._check(request)
        if err is not None:
            return err
        if not request.content_type.startswith("multipart/"):
            return self._envelope(4000, "The requested parameter is invalid: file")
        post = await request.post()
        f = post.get("file")
        if not isinstance(f, web.FileField):
            return self._envelope(4000, "The requested parameter is invalid: file")
        data = f.file.read()
        fid = self._new_id()
        name = f.filename or "file"
        rec = {"id": fid, "bytes": len(data), "created_at": int(time.time()), "file_name": name}
        self.uploads.append({**rec, "data": data})
        self._files[f"{fid}-{name}"] = (data, f.content_type or "application/octet-stream")
        r = self.record(request)
        if r is not None:
            r.form = {"file": {"filename": name, "size": len(data)}}
        return self._envelope(0, "", data=rec)

    async def _file(self, request: web.Request) -> web.Response:
        item = self._files.get(request.match_info["name"])
        if item is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=item[0], content_type=item[1])

    # convenience -------------------------------------------------------------------------------
    def add_workflow(self, workflow_id: str, spec: Any = "echo") -> None:
        self.workflows[workflow_id] = spec

    def file_bytes(self, url_or_name: str) -> bytes | None:
        name = url_or_name.rsplit("/files/", 1)[-1]
        item = self._files.get(name)
        return item[0] if item else None


WorkflowSpec = Callable[[dict], dict]
