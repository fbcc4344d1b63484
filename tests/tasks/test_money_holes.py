"""Issue #12 "Trust", money: no result without paying, holds outlive tasks, callback tokens bound
to their attempt, no storage written before the charge (docs/adr/0011-money-holes.md)."""

from __future__ import annotations

import base64
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.utils import timezone

from media_app.models import MediaObject, MediaStatus
from media_app.storage import get_backend
from podi.reconcile import run_pass
from tasks.models import Task, TaskStatus
from tasks.services import (
    task_finish,
    task_requeue_or_fail,
    task_token,
    tasks_dispatch_pending,
)
from tests.servers.comfyui import solid_png
from tests.tasks.conftest import (
    INVERT_SCHEMA,
    add_binding,
    make_ability,
    make_executor,
    wait_for,
    wait_status,
)
from wallet.models import Hold
from wallet.selectors import account_for_user
from wallet.services import holds_expire

pytestmark = pytest.mark.django_db(transaction=True)

TWO_OUTPUTS_GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {
            "width": "{{width}}",
            "height": "{{height}}",
            "batch_size": 1,
            "color": "{{color}}",
        },
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "b"}},
}


def balance(user) -> tuple[int, int]:
    account = account_for_user(user)
    account.refresh_from_db()
    return account.balance, account.frozen


def refusal(client: httpx.Client, object_key: str) -> tuple[int, str]:
    response = client.post("/api/media/v1/signed-download", json={"objectKey": object_key})
    return response.status_code, response.json().get("code", "")


def in_storage(object_key: str) -> bool:
    return get_backend().exists(object_key)


def staged_media_swept() -> int:
    """One reconciler pass, as ``manage.py up`` runs them; how many staged objects it swept."""
    return run_pass()["tasks.actors.reconcile_tasks"]["stagedMediaSwept"]


# --- 1. Results only with the charge ---------------------------------------------------------


def test_outputs_stay_unreachable_while_running_and_after_cancel(worker, comfy, funded, api):
    # Both images are saved, then the prompt sleeps: their bytes are fetched while it runs
    # (docs/adr/0026-outputs-fetched-early.md), and their rows come only with the task's end.
    graph = {
        **TWO_OUTPUTS_GRAPH,
        "5": {"class_type": "PodiTestSleep", "inputs": {"image": ["3", 0], "seconds": 30, "steps": 300}},
    }  # fmt: skip
    make_ability("two", [make_executor("gpu-1", comfy.url)], graph=graph, schema=INVERT_SCHEMA)
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "two", "params": {"width": 4, "height": 4}}
    ).json()["taskId"]
    prefix = f"results/{funded.pk}/{task_id}/"
    files = wait_for(lambda: len(get_backend().list(prefix)) == 2 and get_backend().list(prefix))
    assert Task.objects.get(public_id=task_id).status == TaskStatus.RUNNING
    assert not MediaObject.objects.filter(task_id=task_id).exists()

    # A predictable key answers exactly like a key that does not exist.
    unknown = refusal(client, f"{prefix}nothing.png")
    assert unknown == (403, "MEDIA_DOWNLOAD_DENIED")
    keys = sorted(found.key for found in files)
    for key in keys:
        assert refusal(client, key) == unknown
    assert client.get(f"/api/tasks/v1/{task_id}").json()["outputs"] == []

    canceled = client.post(f"/api/tasks/v1/{task_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["outputs"] == []
    assert balance(funded) == (1000, 0)

    # The stopped attempt records what it fetched as staged (the task ended otherwise): nothing
    # of it is reachable, and the sweep removes it.
    wait_for(lambda: MediaObject.objects.filter(task_id=task_id).count() == 2, timeout=20)
    staged = MediaObject.objects.filter(task_id=task_id, status=MediaStatus.STAGED)
    assert sorted(staged.values_list("object_key", flat=True)) == keys
    for key in keys:
        assert refusal(client, key) == unknown
    assert staged_media_swept() == 2
    for key in keys:
        assert not in_storage(key)
        assert refusal(client, key) == unknown
    assert not MediaObject.objects.filter(task_id=task_id).exists()
    assert staged_media_swept() == 0
    detail = client.get(f"/api/tasks/v1/{task_id}").json()
    assert (detail["status"], detail["outputs"]) == ("canceled", [])
    assert balance(funded) == (1000, 0)


def test_outputs_become_downloadable_with_the_charge(worker, comfy, funded, api):
    make_ability(
        "two", [make_executor("gpu-1", comfy.url)], graph=TWO_OUTPUTS_GRAPH, schema=INVERT_SCHEMA
    )
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "two", "params": {"width": 4, "height": 4}}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed", "canceled"})
    assert done["status"] == "succeeded", done
    assert balance(funded) == (990, 0)
    assert len(done["outputs"]) == 2
    for output in done["outputs"]:
        signed = client.post(
            "/api/media/v1/signed-download", json={"objectKey": output["objectKey"]}
        )
        assert signed.status_code == 200, signed.text
        assert httpx.get(signed.json()["url"], timeout=10).status_code == 200
        assert httpx.get(output["url"], timeout=10).status_code == 200
    assert staged_media_swept() == 0
    assert set(MediaObject.objects.filter(task_id=task_id).values_list("status", flat=True)) == {
        MediaStatus.UPLOADED
    }
    assert Hold.objects.get(public_id=done["holdId"]).status == "confirmed"


# --- 2. The hold outlives the task ---------------------------------------------------------


@pytest.mark.usefixtures("queued_submits")
def test_hold_outlives_a_longer_binding_picked_at_dispatch(comfy, comfy2, funded, api):
    quick, slow = make_executor("quick", comfy.url), make_executor("slow", comfy2.url)
    ability = make_ability("invert", [quick], queue_timeout=5, run_timeout=5, max_attempts=1)
    add_binding(ability, slow, priority=-1, max_attempts=1, queue_timeout=5, run_timeout=100_000)
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "invert"}).json()["taskId"]
    quick.enabled = False  # the operator takes the quick executor out: dispatch picks the slow one
    quick.save()
    assert tasks_dispatch_pending() == 1
    task = Task.objects.get(public_id=task_id)
    assert (task.status, task.executor_id, task.run_timeout) == ("running", slow.pk, 100_000)
    hold = Hold.objects.get(public_id=task.hold_id)
    assert hold.expires_at > task.run_deadline + timedelta(seconds=60)
    # Even at the very end of the run (and the reconciler's grace), the hold is still held.
    assert holds_expire(now=task.run_deadline + timedelta(seconds=60)) == 0
    assert Hold.objects.get(pk=hold.pk).status == "held"
    assert task_finish(task_id=task_id, status="succeeded", attempt=1).status == "succeeded"
    assert Hold.objects.get(pk=hold.pk).status == "confirmed"
    assert balance(funded) == (990, 0)


@pytest.mark.usefixtures("queued_submits")
def test_requeue_moves_the_hold_with_the_queue_deadline(comfy, funded, api, settings):
    settings.TASK_HOLD_MARGIN = 2
    make_ability(
        "invert",
        [make_executor("gpu", comfy.url)],
        queue_timeout=1,
        run_timeout=1,
        max_attempts=2,
    )
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "invert"}).json()["taskId"]
    assert tasks_dispatch_pending() == 1
    first = Hold.objects.get(task_id=task_id).expires_at  # submit + 1 + 2 × 1 + 2 s
    time.sleep(3)  # the attempt failed late: the new queue deadline lies beyond that
    requeued = task_requeue_or_fail(
        task_id=task_id, attempt=1, error_code="EXECUTOR_ERROR", error_message="502"
    )
    assert requeued.status == "queued"
    hold = Hold.objects.get(task_id=task_id)
    assert hold.expires_at == requeued.queue_deadline + timedelta(seconds=2)
    assert hold.expires_at > first


@pytest.mark.usefixtures("queued_submits")
def test_a_live_tasks_hold_never_expires_and_an_overdue_hold_ends_the_task(
    comfy, funded, api, settings
):
    make_ability("invert", [make_executor("gpu", comfy.url)])
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "invert"}).json()["taskId"]
    assert tasks_dispatch_pending() == 1
    hold = Hold.objects.get(task_id=task_id)
    # However it came to be overdue, expiry leaves a live task's hold to the task.
    Hold.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert holds_expire() == 0
    assert Hold.objects.get(pk=hold.pk).status == "held"
    # The task ends, once, failed and uncharged — it does not stay running.
    done = task_finish(task_id=task_id, status="succeeded", attempt=1)
    assert (done.status, done.error_code) == ("failed", "TASK_HOLD_EXPIRED")
    assert Hold.objects.get(pk=hold.pk).status == "released"
    assert balance(funded) == (1000, 0)
    assert task_finish(task_id=task_id, status="succeeded", attempt=1).status == "failed"
    assert holds_expire() == 0


def test_a_confirm_after_the_hold_expired_fails_the_run_once(worker, comfy, funded, api, settings):
    """End to end: the outputs arrive after the hold's margin. The task fails (not charged,
    outputs swept) instead of staying running and calling the executor again."""
    settings.TASK_HOLD_MARGIN = 1
    make_ability(
        "two",
        [make_executor("gpu", comfy.url)],
        graph=TWO_OUTPUTS_GRAPH,
        schema=INVERT_SCHEMA,
        queue_timeout=1,
        run_timeout=2,
        max_attempts=1,
    )
    comfy.view_delay = 4.0  # both outputs are fetched at once, each taking 4 s
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "two"}).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed", "canceled"}, timeout=30)
    assert (done["status"], done["error"]["code"]) == ("failed", "TASK_HOLD_EXPIRED"), done
    assert done["outputs"] == []
    assert balance(funded) == (1000, 0)
    assert len(comfy.prompts) == 1
    assert staged_media_swept() == 2


# --- 3. A callback token is bound to its attempt ------------------------------------------------


@pytest.mark.usefixtures("queued_submits")
def test_a_token_of_an_earlier_attempt_cannot_finish_the_current_one(comfy, funded, api):
    make_ability("invert", [make_executor("gpu", comfy.url)], points=10)
    client, executor = api(funded), api()
    task_id = client.post("/api/tasks/v1/submit", json={"action": "invert"}).json()["taskId"]
    assert tasks_dispatch_pending() == 1
    first_token = task_token(Task.objects.get(public_id=task_id))

    def receipt(token: str):
        return executor.post(
            f"/api/tasks/v1/{task_id}/complete",
            json={"status": "succeeded", "result": {"by": token[-6:]}},
            headers={"Authorization": f"Bearer {token}"},
        )

    # Attempt 1 is given up on (a transient error): its token no longer finishes the task …
    task_requeue_or_fail(task_id=task_id, attempt=1, error_code="EXECUTOR_ERROR", error_message="x")
    stale = receipt(first_token)
    assert stale.status_code == 409, stale.text
    assert stale.json()["code"] == "TASK_ATTEMPT_STALE"
    assert stale.json()["details"] == {"attempt": 1, "currentAttempt": 1}
    # … nor the attempt that runs now.
    time.sleep(1.1)  # the back-off after a first failure
    assert tasks_dispatch_pending() == 1
    task = Task.objects.get(public_id=task_id)
    assert (task.status, task.attempts) == ("running", 2)
    stale = receipt(first_token)
    assert (stale.status_code, stale.json()["code"]) == (409, "TASK_ATTEMPT_STALE")
    assert stale.json()["details"] == {"attempt": 1, "currentAttempt": 2}
    assert Task.objects.get(public_id=task_id).status == "running"
    assert balance(funded) == (990, 10)

    current = receipt(task_token(task))
    assert current.status_code == 200, current.text
    assert (current.json()["status"], current.json()["attempts"]) == ("succeeded", 2)
    assert balance(funded) == (990, 0)
    late = receipt(first_token)
    assert (late.status_code, late.json()["code"]) == (409, "TASK_ATTEMPT_STALE")
    assert balance(funded) == (990, 0)


# --- 4. Nothing is written before the charge -------------------------------------------------

IMAGE_GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}
IMAGE_SCHEMA = {
    "type": "object",
    "properties": {"image": {"type": "string", "x-podi-media": True}},
    "required": ["image"],
    "additionalProperties": False,
}


def stored_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def base64_inputs(count: int) -> list[dict]:
    png = base64.b64encode(solid_png(16, 16, (0, 0, 255))).decode()
    return [{"base64": png, "fileName": f"in-{index}.png"} for index in range(count)]


@pytest.fixture
def image_ability(comfy):
    return make_ability(
        "invert-image",
        [make_executor("gpu", comfy.url)],
        graph=IMAGE_GRAPH,
        schema=IMAGE_SCHEMA,
        points=10,
        requires_image=True,
    )


def test_a_submit_that_cannot_pay_writes_no_input(image_ability, outsider, api, settings):
    client = api(outsider)  # no points at all
    refused = client.post(
        "/api/tasks/v1/submit", json={"action": "invert-image", "inputs": base64_inputs(8)}
    )
    assert refused.status_code == 402, refused.text
    assert refused.json()["code"] == "WALLET_INSUFFICIENT"
    assert refused.json()["details"] == {"balance": 0, "required": 10}
    assert stored_files(settings) == []
    assert not MediaObject.objects.exists()
    assert not Task.objects.exists() and not Hold.objects.exists()


def test_a_failed_batch_removes_the_inputs_it_wrote(image_ability, funded, api, settings):
    client = api(funded)
    refused = client.post(
        "/api/tasks/v1/batches",
        json={
            "action": "invert-image",
            "items": [{"inputs": base64_inputs(2)}, {"inputs": [{"base64": "not base64!"}]}],
        },
    )
    assert refused.status_code == 400, refused.text
    assert stored_files(settings) == []
    assert not MediaObject.objects.exists()
    assert not Task.objects.exists() and not Hold.objects.exists()
    assert balance(funded) == (1000, 0)


def test_base64_inputs_become_usable_with_the_freeze(worker, image_ability, funded, api, settings):
    client = api(funded)
    submitted = client.post(
        "/api/tasks/v1/submit", json={"action": "invert-image", "inputs": base64_inputs(1)}
    )
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["taskId"]
    key = f"results/{funded.pk}/{task_id}/input-in-0.png"
    media = MediaObject.objects.get(object_key=key)
    assert (media.status, media.mime_type, media.width) == ("uploaded", "image/png", 16)
    assert client.get(f"/api/tasks/v1/{task_id}").json()["inputs"] == [
        {"objectKey": key, "mimeType": "image/png", "size": media.size}
    ]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["params"]["image"] == key
    assert balance(funded) == (990, 0)
