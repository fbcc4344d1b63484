"""Loopback stand-ins for Aliyun services the tests cannot reach: the OSS callback public-key
host and the STS API (protocol-faithful JSON answers, requests recorded)."""

from __future__ import annotations

import json

from aiohttp import web

from tests.servers.base import LoopbackServer


class PubKeyServer(LoopbackServer):
    """Serves a PEM public key at ``/callback_pub_key_v1.pem`` (like gosspublic.alicdn.com)."""

    def __init__(self, pem: bytes, port: int = 0):
        self.pem = pem
        super().__init__(port)

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/callback_pub_key_v1.pem", self._key)

    async def _key(self, request: web.Request) -> web.Response:
        return web.Response(body=self.pem, content_type="application/x-pem-file")

    @property
    def key_url(self) -> str:
        return f"{self.url}/callback_pub_key_v1.pem"


class StsServer(LoopbackServer):
    """Answers ``AssumeRole`` (RPC style, query parameters) like sts.aliyuncs.com."""

    def reset_state(self) -> None:
        self.fail_with: tuple[int, dict] | None = None
        self.counter = 0

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/", self._assume_role)

    async def _assume_role(self, request: web.Request) -> web.Response:
        if self.fail_with is not None:
            status, body = self.fail_with
            return web.json_response(body, status=status)
        if request.headers.get("x-acs-action") != "AssumeRole":
            return web.json_response({"Code": "InvalidAction"}, status=400)
        self.counter += 1
        return web.json_response(
            {
                "RequestId": f"req-{self.counter}",
                "AssumedRoleUser": {
                    "Arn": f"{request.query.get('RoleArn')}/{request.query.get('RoleSessionName')}",
                    "AssumedRoleId": f"3000:{request.query.get('RoleSessionName')}",
                },
                "Credentials": {
                    "AccessKeyId": f"STS.tmpkey{self.counter}",
                    "AccessKeySecret": f"tmp-secret-{self.counter}",
                    "SecurityToken": f"CAIS-token-{self.counter}",
                    "Expiration": "2099-01-01T00:00:00Z",
                },
            }
        )


def decode_json(text: str) -> dict:
    return json.loads(text)
