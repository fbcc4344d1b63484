"""An agent sidecar on loopback: ``POST /tasks`` as a real agent would answer it.

``mode`` (change at any time from the test thread): ``accept`` (202 ``{"accepted": true}``),
``busy`` (409, doing something else), ``error`` (503), ``reject`` (400), ``slow`` (sleeps
``delay`` seconds, then accepts). ``pushes`` holds the JSON bodies received, in order.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.servers.base import LoopbackServer


class AgentTestServer(LoopbackServer):
    def reset_state(self) -> None:
        self.mode = "accept"
        self.delay = 0.0
        self.pushes: list[dict] = []

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/tasks", self.tasks)
        app.router.add_post("/prefix/tasks", self.tasks)

    async def tasks(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.pushes.append(body)
        mode = self.mode
        if mode == "busy":
            return web.json_response({"error": "busy", "running": "atk_other"}, status=409)
        if mode == "error":
            return web.json_response({"error": "disk full"}, status=503)
        if mode == "reject":
            return web.json_response({"error": "unknown action"}, status=400)
        if mode == "slow":
            await asyncio.sleep(self.delay)
        return web.json_response({"accepted": True, "taskId": body.get("taskId")}, status=202)
