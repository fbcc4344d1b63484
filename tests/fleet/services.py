"""Stand-alone services a fleet host runs: ``python -m tests.fleet.services comfyui|webhooks``.

* ``comfyui --host H --port P --root DIR``: the protocol-faithful ComfyUI test server
  (tests/servers/comfyui.py) listening on H:P until SIGTERM.
* ``webhooks --host H --port P --log FILE``: answers 200 to every POST and appends one JSON line
  per request (``webhook-id``, whether its signature verifies, the JSON body) to FILE; ``GET /health`` answers 200.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading


def run_comfyui(host: str, port: int, root: str) -> None:
    from tests.servers.comfyui import ComfyUITestServer

    server = ComfyUITestServer(root_dir=root, port=port)
    server.host = host
    server.start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait()
    server.stop()


def run_webhooks(host: str, port: int, log: str) -> None:
    from aiohttp import web
    from standardwebhooks import Webhook, WebhookVerificationError

    out = open(log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            document = json.loads(body)
        except ValueError:
            document = {}
        try:
            Webhook(os.environ["WEBHOOK_SECRET"]).verify(body, dict(request.headers))
            verified = True
        except WebhookVerificationError:
            verified = False
        out.write(
            json.dumps(
                {
                    "id": request.headers.get("webhook-id", ""),
                    "verified": verified,
                    "body": document,
                }
            )
            + "\n"
        )
        return web.json_response({"ok": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", receive)
    app.router.add_get("/health", health)
    web.run_app(app, host=host, port=port, print=None, handle_signals=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("service", choices=["comfyui", "webhooks"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root")
    parser.add_argument("--log")
    args = parser.parse_args()
    if args.service == "comfyui":
        run_comfyui(args.host, args.port, args.root)
    else:
        run_webhooks(args.host, args.port, args.log)


if __name__ == "__main__":
    main()
