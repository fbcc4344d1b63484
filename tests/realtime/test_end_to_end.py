"""A real task, followed live over the WebSocket and called back with a signed webhook.

The task runs on a ComfyUI test server through the real worker; the events it raises (task
status, progress, wallet holds) come from the worker and reach the socket on the configured
path (in-process embedded; through Redis to a separate web process in production).
"""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import urlsplit

import pytest
from django.test import Client
from standardwebhooks import Webhook

from podi.realtime.models import Event, WebhookAttempt, WebhookDelivery
from tasks.services import task_submit
from tests.realtime.conftest import db, jwt, open_stream, receive
from tests.servers import ComfyUITestServer
from tests.tasks.conftest import make_ability, make_executor
from wallet.services import wallet_grant

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

SECRET = "whsec_" + base64.b64encode(b"podi-end-to-end-secret-0123456789").decode()


def test_a_task_is_followed_live_and_called_back(ws_server, owner, receiver, worker, settings):
    settings.WEBHOOK_SECRET = SECRET
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver listens on 127.0.0.1
    wallet_grant(user=owner, points=100, reason="test", reference="e2e")
    granted = Event.objects.filter(user=owner).count()  # the grant's own event
    token = jwt(owner)

    with ComfyUITestServer() as comfy:
        make_ability("invert", [make_executor("gpu-1", comfy.url)], points=10)

        async def main():
            ws = await open_stream(ws_server, token)
            hello = await receive(ws)
            assert hello["lastSeq"] == granted
            task = await db(
                task_submit,
                user=owner,
                action="invert",
                params={"width": 8, "height": 6},
                callback_url=receiver.url,
            )
            events, seen = [], set()
            while not {("task.status", "succeeded"), ("wallet.points", "deducted")} <= seen:
                message = await receive(ws, timeout=60)
                if message["type"] in ("pong", "subscribed", "resumed", "error"):
                    continue
                events.append(message)
                seen.add((message["type"], message["payload"].get("status")))
            await ws.close()
            return task, events

        task, events = asyncio.run(main())

    # Every event of the user, once, in commit order.
    assert [e["seq"] for e in events] == list(range(granted + 1, granted + 1 + len(events)))
    statuses = [e["payload"]["status"] for e in events if e["type"] == "task.status"]
    assert statuses == ["queued", "running", "succeeded"]
    wallet = [
        (e["payload"]["status"], e["payload"]["points"])
        for e in events
        if e["type"] == "wallet.points"
    ]
    assert wallet == [("frozen", 10), ("deducted", 10)]
    assert all(e["payload"]["taskId"] == task.public_id for e in events)
    finished = next(e for e in events if e["payload"].get("status") == "succeeded")
    assert finished["payload"]["progress"] == 100
    [streamed] = finished["payload"]["outputs"]
    # The stream signs the output's URL as it sends the event: the client downloads straight
    # away, without asking for the task first. The persisted event keeps no URL (it expires).
    assert streamed["objectKey"].startswith(f"results/{owner.pk}/{task.public_id}/")
    url = urlsplit(streamed["url"])
    download = Client().get(f"{url.path}?{url.query}")  # this process holds the test's media
    assert download.status_code == 200
    assert b"".join(download.streaming_content).startswith(b"\x89PNG")
    persisted = Event.objects.get(user=owner, seq=finished["seq"])
    assert "url" not in persisted.payload["outputs"][0]

    # The default callback events are the terminal ones: one signed call for task.succeeded.
    [request] = receiver.wait_for(1, timeout=30)
    body = Webhook(SECRET).verify(request.body, request.headers)
    delivery = WebhookDelivery.objects.get(task_public_id=task.public_id)
    assert request.headers["webhook-id"] == delivery.public_id
    assert body["type"] == "task.succeeded" and body["taskId"] == task.public_id
    assert (body["status"], body["progress"], body["error"]) == ("succeeded", 100, None)
    [output] = body["outputs"]
    assert output["objectKey"].startswith(f"results/{owner.pk}/{task.public_id}/")
    assert output["url"].startswith("http")
    assert (output["width"], output["height"], output["mimeType"]) == (8, 6, "image/png")
    assert json.loads(request.body)["taskId"] == task.public_id
    assert len(receiver.wait_for(2, timeout=1)) == 1
    for _ in range(50):
        delivery.refresh_from_db()
        if delivery.status == WebhookDelivery.Status.SUCCEEDED:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert (delivery.status, delivery.attempts) == (WebhookDelivery.Status.SUCCEEDED, 1)
    assert WebhookAttempt.objects.filter(delivery=delivery).count() == 1
