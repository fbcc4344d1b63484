"""Load for the fleet: users submitting through nginx, and WebSocket subscribers that resume.

``Load`` runs an asyncio loop in a thread of its own. Submits carry an ``Idempotency-Key`` and are
retried (same key, same body) on a refused connection, a 502/503/504 or 409 in progress, so a
web host dying mid-request never makes a task twice nor loses one. Each user has a subscriber on
``/api/notify/v1/stream`` that reconnects with ``?after=<last seq>`` whenever its socket drops;
it records every ``seq`` it gets, and any gap or duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx

RETRY_STATUSES = {502, 503, 504}


@dataclass
class Subscriber:
    username: str
    token: str
    seqs: list[int] = field(default_factory=list)
    events: dict[int, dict] = field(default_factory=dict)
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    connects: int = 0
    resumed_after: list[int] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0


class Load:
    def __init__(self, base: str, hook_url: str, action: str, ca_file: str):
        self.base = base
        self.ws_base = base.replace("https://", "wss://", 1)
        self.hook_url = hook_url
        self.action = action
        self.tokens: dict[str, str] = {}
        self.subscribers: dict[str, Subscriber] = {}
        self.task_ids: list[str] = []
        self.submit_errors: dict[str, int] = {}
        self.responses: dict[int, int] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="load")
        self.thread.start()
        self.stopping = False
        self.ssl = ssl.create_default_context(cafile=ca_file)  # the fleet's own certificate
        self._subscriber_tasks: list[asyncio.Future] = []

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, verify=self.ssl, timeout=30)

    # --- users -----------------------------------------------------------------------------

    def login(self, usernames: list[str], password: str) -> None:
        async def login_all():
            async with self.client() as http:
                for name in usernames:
                    response = await http.post(
                        "/api/auth/v1/login", json={"username": name, "password": password}
                    )
                    assert response.status_code == 200, response.text
                    self.tokens[name] = response.json()["accessToken"]

        self.run(login_all())

    # --- submitting --------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        self.submit_errors[key] = self.submit_errors.get(key, 0) + 1

    async def _submit_one(self, http, token: str, params: dict, deadline: float) -> str:
        key = uuid.uuid4().hex
        body = {
            "action": self.action,
            "params": params,
            "callbackUrl": self.hook_url,
            "clientRef": key,
        }
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        while True:
            try:
                response = await http.post("/api/tasks/v1/submit", json=body, headers=headers)
            except httpx.HTTPError as exc:
                self._count(f"transport {type(exc).__name__}")
            else:
                self.responses[response.status_code] = (
                    self.responses.get(response.status_code, 0) + 1
                )
                if response.status_code == 202:
                    return response.json()["taskId"]
                code = ""
                with contextlib.suppress(ValueError, AttributeError):
                    code = response.json().get("code", "")
                self._count(f"{response.status_code} {code}")
                retry = response.status_code in RETRY_STATUSES or code == "IDEMPOTENCY_IN_PROGRESS"
                if not retry:
                    raise AssertionError(f"submit refused: {response.status_code} {response.text}")
                if response.status_code >= 500 and not code:
                    raise AssertionError(
                        f"a {response.status_code} without an error code: {response.text[:300]}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(f"submit still failing at the deadline: {self.submit_errors}")
            await asyncio.sleep(0.5)

    async def _submit(self, per_user: int, seconds: float, spread: float, deadline: float):
        async with self.client() as http:

            async def user(token: str):
                ids = []
                for index in range(per_user):
                    params = {"seconds": seconds, "color": index}
                    ids.append(await self._submit_one(http, token, params, deadline))
                    await asyncio.sleep(spread / per_user)
                return ids

            results = await asyncio.gather(*(user(t) for t in self.tokens.values()))
        for ids in results:
            self.task_ids.extend(ids)
        return [i for ids in results for i in ids]

    def submit(self, per_user: int, *, seconds: float = 1.0, spread: float = 0.0, timeout=180):
        """Submit ``per_user`` tasks for every user (spread over ``spread`` seconds); blocks."""
        return self.run(self._submit(per_user, seconds, spread, time.monotonic() + timeout))

    def submit_in_background(self, per_user: int, *, seconds: float = 1.0, spread: float = 10):
        return asyncio.run_coroutine_threadsafe(
            self._submit(per_user, seconds, spread, time.monotonic() + 240), self.loop
        )

    # --- subscribing -------------------------------------------------------------------------

    def subscribe_all(self) -> None:
        for name, token in self.tokens.items():
            subscriber = Subscriber(name, token)
            self.subscribers[name] = subscriber
            self._subscriber_tasks.append(
                asyncio.run_coroutine_threadsafe(self._follow(subscriber), self.loop)
            )

    async def _follow(self, sub: Subscriber) -> None:
        from websockets.asyncio.client import connect

        while not self.stopping:
            url = f"{self.ws_base}/api/notify/v1/stream?token={sub.token}&after={sub.last}"
            try:
                async with connect(url, ssl=self.ssl, open_timeout=10, ping_interval=5) as ws:
                    sub.connects += 1
                    sub.resumed_after.append(sub.last)
                    async for raw in ws:
                        message = json.loads(raw)
                        seq = message.get("seq")
                        if seq is None:
                            continue
                        if seq <= sub.last:
                            sub.duplicates += 1
                            continue
                        if seq != sub.last + 1:
                            sub.gaps.append((sub.last, seq))
                        sub.seqs.append(seq)
                        sub.events[seq] = message
            except Exception:  # noqa: S110 - any drop: reconnect and resume
                pass
            if not self.stopping:
                await asyncio.sleep(0.5)

    def terminal_seen(self, username: str) -> dict[str, int]:
        """Terminal ``task.status`` events the user's subscriber received, per task."""
        seen: dict[str, int] = {}
        for message in self.subscribers[username].events.values():
            payload = message.get("payload") or {}
            if message.get("type") == "task.status" and payload.get("status") in (
                "succeeded",
                "failed",
                "canceled",
            ):
                seen[payload["taskId"]] = seen.get(payload["taskId"], 0) + 1
        return seen

    def close(self) -> None:
        self.stopping = True

        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
