"""Stream payload hooks: what expires (signed URLs) is made when the stream encodes an event,
once per event and process, never persisted, and a failing hook never holds the event back."""

from __future__ import annotations

import json

import pytest

from podi.realtime import events as live
from podi.realtime.consumers import event_text
from tasks.services import stream_payload_for_sending


@pytest.fixture
def hooks():
    saved = list(live._stream_payload_hooks)
    live._stream_payload_hooks.clear()
    yield live._stream_payload_hooks
    live._stream_payload_hooks[:] = saved


def _event() -> dict:
    return {
        "id": "evt_1",
        "seq": 7,
        "type": "task.status",
        "userId": 3,
        "payload": {"taskId": "tsk_1", "status": "succeeded", "outputs": [{"objectKey": "k"}]},
        "timestamp": "2026-12-06T00:00:00Z",
    }


def test_a_hook_finishes_the_payload_once_per_event_and_leaves_the_event_as_it_was(hooks):
    calls = []

    def sign(event_type, payload):
        calls.append(event_type)
        outputs = [
            {**item, "url": f"https://signed/{item['objectKey']}"} for item in payload["outputs"]
        ]
        return {**payload, "outputs": outputs}

    live.register_stream_payload_hook(sign)
    live.register_stream_payload_hook(sign)  # registered once
    event = _event()
    own = json.loads(event_text(event, with_user=False))
    staff = json.loads(event_text(event, with_user=True))
    again = json.loads(event_text(event, with_user=False))
    assert calls == ["task.status"]
    assert own["payload"]["outputs"] == [{"objectKey": "k", "url": "https://signed/k"}]
    assert staff["payload"] == own["payload"] == again["payload"] and staff["userId"] == 3
    assert event["payload"]["outputs"] == [{"objectKey": "k"}]  # what is persisted: no URL


def test_a_failing_hook_sends_the_event_as_recorded(hooks):
    def broken(event_type, payload):
        raise RuntimeError("storage misconfigured")

    live.register_stream_payload_hook(broken)
    sent = json.loads(event_text(_event(), with_user=False))
    assert sent["payload"] == _event()["payload"]
    assert sent["seq"] == 7


def test_the_tasks_hook_signs_task_outputs_only():
    wallet = {"holdId": "hld_1", "status": "deducted", "points": 5}
    assert stream_payload_for_sending("wallet.points", wallet) is wallet
    payload = {
        "taskId": "tsk_1",
        "status": "succeeded",
        "outputs": [{"objectKey": "results/1/t/a.png"}],
    }
    signed = stream_payload_for_sending("task.status", payload)
    assert signed["outputs"][0]["url"].startswith("http")
    assert "url" not in payload["outputs"][0]
