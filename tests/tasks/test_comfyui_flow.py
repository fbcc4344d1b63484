"""Tasks end to end through real HTTP, a real Dramatiq worker and a ComfyUI test server."""

from __future__ import annotations

import time

import httpx
import pytest

from podi.realtime.models import Event
from tasks.execution import tasks_fail_queue_timeouts
from tasks.models import Task, TaskStatus
from tests.servers.comfyui import png_decode
from tests.tasks.conftest import (
    SLEEP_GRAPH,
    SLEEP_SCHEMA,
    make_ability,
    make_executor,
    wait_for,
    wait_status,
)
from wallet.models import Hold, LedgerEntry
from wallet.selectors import account_for_user

pytestmark = pytest.mark.django_db(transaction=True)


def balance(user) -> tuple[int, int]:
    account = account_for_user(user)
    account.refresh_from_db()
    return account.balance, account.frozen


def test_happy_path_end_to_end(worker, comfy, funded, api):
    make_ability("invert", [make_executor("gpu-1", comfy.url)], points=10)
    client = api(funded)
    submitted = client.post(
        "/api/tasks/v1/submit",
        json={"action": "invert", "params": {"width": 8, "height": 6}, "clientRef": "order-1"},
    )
    assert submitted.status_code == 202, submitted.text
    body = submitted.json()
    assert body["status"] == "running"  # a free slot and nobody waiting: started at submit
    assert body["points"] == 10
    assert body["holdId"].startswith("hold_")
    task_id = body["taskId"]

    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["progress"] == 100
    assert done["clientRef"] == "order-1"
    assert done["executor"] == "gpu-1"
    assert done["attempts"] == 1
    assert done["error"] is None
    assert done["params"] == {"width": 8, "height": 6, "color": 16711680}
    assert len(done["outputs"]) == 1
    output = done["outputs"][0]
    assert output["objectKey"].startswith(f"results/{funded.pk}/{task_id}/")
    assert output["mimeType"] == "image/png"
    assert (output["width"], output["height"]) == (8, 6)

    # The signed URL serves the stored bytes: an 8×6 image, the inverse of red.
    downloaded = httpx.get(output["url"], timeout=10)
    assert downloaded.status_code == 200
    width, height, channels, pixels = png_decode(downloaded.content)
    assert (width, height) == (8, 6)
    assert tuple(pixels[:3]) == (0, 255, 255)
    assert output["size"] == len(downloaded.content)

    # Charged exactly once, nothing left frozen.
    assert balance(funded) == (990, 0)
    hold = Hold.objects.get(public_id=body["holdId"])
    assert hold.status == "confirmed"
    assert LedgerEntry.objects.filter(hold=hold, type="confirm").count() == 1

    # ComfyUI got one prompt with our prompt_id, a client_id and a unique filename_prefix.
    assert len(comfy.prompts) == 1
    ((prompt_id, sent),) = comfy.prompts.items()
    assert Task.objects.get(public_id=task_id).external_id == prompt_id
    assert sent["client_id"].startswith("podi-")
    assert sent["prompt"]["3"]["inputs"]["filename_prefix"] == f"podi/{task_id}-1/inv"
    assert sent["prompt"]["1"]["inputs"]["width"] == 8  # typed, not "8"

    events = client.get(f"/api/tasks/v1/{task_id}/events").json()["items"]
    statuses = [e["payload"]["status"] for e in events if e["type"] == "task.status"]
    assert statuses == ["queued", "running", "succeeded"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    wallet_events = Event.objects.filter(type="wallet.points", user=funded)
    assert [e.payload["status"] for e in wallet_events.order_by("seq")] == [
        "granted",
        "frozen",
        "deducted",
    ]


def test_node_errors_fail_at_once_and_release(worker, comfy, funded, api):
    make_ability("invert", [make_executor("gpu-1", comfy.url)], points=10)
    client = api(funded)
    # width 0 passes our schema? No: the schema says minimum 1, so use a graph-level error.
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "invert", "params": {"width": 8}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded"  # control: the same ability works

    bad = make_ability(
        "broken",
        [make_executor("gpu-2", comfy.url)],
        graph={
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0},
            },
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "x"},
            },
        },
        schema={"type": "object", "properties": {}, "additionalProperties": False},
        points=7,
    )
    assert bad.points == 7
    before = len(comfy.prompts)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "broken"}).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "WORKFLOW_REJECTED"
    assert "Value 0 smaller than min of 1" in done["error"]["message"]
    assert done["attempts"] == 1
    assert len(comfy.prompts) == before + 1  # not retried
    assert balance(funded) == (990, 0)  # 10 charged for the first, 7 released


def test_executor_down_is_retried_on_another_executor(worker, comfy, funded, api):
    down = make_executor("gpu-down", "http://127.0.0.1:9")  # nothing listens on port 9
    up = make_executor("gpu-up", comfy.url)
    make_ability("invert", [down, up], priorities=[10, 0])
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "invert"}).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"}, timeout=30)
    assert done["status"] == "succeeded", done
    assert done["executor"] == "gpu-up"
    assert done["attempts"] == 2
    task = Task.objects.get(public_id=task_id)
    assert task.executor_state["triedExecutors"] == [down.pk]
    assert balance(funded) == (990, 0)


def test_forgotten_prompt_is_retried_and_never_succeeds(worker, comfy, funded, api):
    executor = make_executor("gpu-1", comfy.url, config={"lost_after": 0.5})
    make_ability("invert", [executor], max_attempts=2)
    comfy.forget_prompts = True
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "invert"}).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"}, timeout=40)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "EXECUTOR_LOST"
    assert done["attempts"] == 2
    assert len(comfy.prompts) == 2
    assert balance(funded) == (1000, 0)


def test_cancel_while_queued_and_while_running(worker, comfy, funded, api):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=5)
    client = api(funded)
    running_id = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 20}}
    ).json()["taskId"]
    wait_for(
        lambda: (
            Task.objects.get(public_id=running_id).external_id
            and comfy.queue_snapshot()["queue_running"]
        )
    )
    queued_id = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 20}}
    ).json()["taskId"]
    queued = client.get(f"/api/tasks/v1/{queued_id}").json()
    assert queued["status"] == "queued"
    assert queued["queuePosition"] == 1

    canceled = client.post(f"/api/tasks/v1/{queued_id}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert balance(funded) == (995, 5)

    canceled = client.post(f"/api/tasks/v1/{running_id}/cancel")
    assert canceled.json()["status"] == "canceled"
    assert balance(funded) == (1000, 0)
    prompt_id = Task.objects.get(public_id=running_id).external_id
    wait_for(lambda: prompt_id in comfy.interrupts)

    again = client.post(f"/api/tasks/v1/{running_id}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "TASK_NOT_CANCELABLE"
    time.sleep(0.5)
    assert Task.objects.get(public_id=running_id).status == TaskStatus.CANCELED


def test_capacity_one_runs_five_tasks_one_at_a_time(worker, comfy, funded, api):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    client = api(funded)
    # Long enough to still run while the four positions are read on a slow machine (the run
    # now ends as soon as ComfyUI says so, no longer up to a 1 s poll later).
    first = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 5}}
    ).json()["taskId"]
    wait_for(lambda: Task.objects.get(public_id=first).status == TaskStatus.RUNNING)
    others = [
        client.post(
            "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 0.3}}
        ).json()["taskId"]
        for _ in range(4)
    ]
    positions = [client.get(f"/api/tasks/v1/{t}").json()["queuePosition"] for t in others]
    assert positions == [1, 2, 3, 4]
    most_running = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = list(Task.objects.values_list("status", flat=True))
        most_running = max(most_running, statuses.count(TaskStatus.RUNNING))
        if all(s == TaskStatus.SUCCEEDED for s in statuses):
            break
        time.sleep(0.05)
    assert all(t.status == TaskStatus.SUCCEEDED for t in Task.objects.all())
    assert most_running == 1
    started = [Task.objects.get(public_id=t).started_at for t in [first, *others]]
    assert started == sorted(started)


def test_priority_order(worker, comfy, funded, api):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability("sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=1)
    client = api(funded)
    blocker = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 1}}
    ).json()["taskId"]
    wait_for(lambda: Task.objects.get(public_id=blocker).status == TaskStatus.RUNNING)
    low = client.post("/api/tasks/v1/submit", json={"action": "sleep", "priority": -5}).json()[
        "taskId"
    ]
    normal = client.post("/api/tasks/v1/submit", json={"action": "sleep"}).json()["taskId"]
    high = client.post("/api/tasks/v1/submit", json={"action": "sleep", "priority": 10}).json()[
        "taskId"
    ]
    assert client.get(f"/api/tasks/v1/{high}").json()["queuePosition"] == 1
    assert client.get(f"/api/tasks/v1/{low}").json()["queuePosition"] == 3
    wait_for(lambda: Task.objects.filter(status=TaskStatus.SUCCEEDED).count() == 4, timeout=30)
    order = list(
        Task.objects.exclude(public_id=blocker)
        .order_by("started_at")
        .values_list("public_id", flat=True)
    )
    assert order == [high, normal, low]


def test_queue_timeout_fails_without_charging(worker, comfy, funded, api):
    executor = make_executor("gpu-1", comfy.url, max_concurrency=1)
    make_ability(
        "sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=3, queue_timeout=1
    )
    client = api(funded)
    blocker = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 3}}
    ).json()["taskId"]
    wait_for(lambda: Task.objects.get(public_id=blocker).status == TaskStatus.RUNNING)
    waiting = client.post("/api/tasks/v1/submit", json={"action": "sleep"}).json()["taskId"]
    time.sleep(1.2)
    assert tasks_fail_queue_timeouts() == 1
    task = client.get(f"/api/tasks/v1/{waiting}").json()
    assert task["status"] == "failed"
    assert task["error"]["code"] == "TASK_QUEUE_TIMEOUT"
    hold = Hold.objects.get(public_id=task["holdId"])
    assert hold.status == "released"
    assert not LedgerEntry.objects.filter(hold=hold, type="confirm").exists()


def test_run_timeout_interrupts_and_fails(worker, comfy, funded, api):
    executor = make_executor("gpu-1", comfy.url)
    make_ability(
        "sleep", [executor], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA, points=3, run_timeout=1
    )
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": 20}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"}, timeout=20)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "TASK_TIMEOUT"
    prompt_id = Task.objects.get(public_id=task_id).external_id
    wait_for(lambda: prompt_id in comfy.interrupts)
    assert balance(funded) == (1000, 0)


def test_system_placeholders_let_a_node_report_back(worker, comfy, funded, api):
    graph = {
        "1": {"class_type": "PodiTestSleep", "inputs": {"seconds": 30, "steps": 300}},
        "2": {"class_type": "PrimitiveString", "inputs": {"value": "{{podi.taskId}}"}},
        "3": {"class_type": "PrimitiveString", "inputs": {"value": "{{podi.callbackUrl}}"}},
        "4": {"class_type": "PrimitiveString", "inputs": {"value": "{{podi.callbackToken}}"}},
    }
    make_ability(
        "report",
        [make_executor("gpu-1", comfy.url)],
        graph=graph,
        schema={"type": "object", "properties": {}},
        points=5,
    )
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "report"}).json()["taskId"]
    wait_for(lambda: comfy.prompts)
    (sent,) = comfy.prompts.values()
    nodes = sent["prompt"]
    assert nodes["2"]["inputs"]["value"] == task_id
    callback_url = nodes["3"]["inputs"]["value"]
    assert callback_url.endswith(f"/api/tasks/v1/{task_id}/complete")
    token = nodes["4"]["inputs"]["value"]
    # The node inside the workflow reports the outcome itself, as seed 001's nodes did.
    receipt = httpx.post(
        callback_url,
        json={"status": "succeeded", "result": {"note": "from the node"}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert receipt.status_code == 200, receipt.text
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    assert done["result"] == {"note": "from the node"}
    # The worker that was following the prompt stops; the task stays succeeded, charged once.
    time.sleep(1.0)
    assert Task.objects.get(public_id=task_id).status == TaskStatus.SUCCEEDED
    assert balance(funded) == (995, 0)
