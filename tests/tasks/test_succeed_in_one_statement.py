"""A success ends in one statement on PostgreSQL (docs/adr/0024-a-success-in-one-statement.md).

The task's lock, the run slot, the hold's charge (with its entry), the task's end, the outputs'
publication and the assets are one statement; the events follow in one more, in the same
transaction. Whatever the path, the outcome is the one the step-by-step finish gives, on both
databases: the checks below run on SQLite too, where that finish is the only path.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.executors.base import ExecutorError
from integrations.executors.runtime import OutputFile
from integrations.models import Executor
from media_app.models import MediaObject, MediaStatus
from media_app.services import media_open, media_store_output, media_write_output
from podi.realtime.models import Event, WebhookDelivery
from tasks.execution import _store_outputs, tasks_sweep_staged_media
from tasks.models import Task, TaskAsset
from tasks.services import task_finish, task_requeue_or_fail, tasks_dispatch_pending
from tests.servers.comfyui import solid_png
from tests.tasks.conftest import make_ability, make_executor
from wallet.models import Hold, LedgerEntry
from wallet.selectors import account_for_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("queued_submits")]
POSTGRESQL = connection.vendor == "postgresql"


def _running(comfy, api, user, *, name: str = "invert") -> Task:
    make_ability(name, [make_executor(f"gpu-{name}", comfy.url)])
    client = api(user)
    response = client.post("/api/tasks/v1/submit", json={"action": name})
    assert response.status_code == 202, response.text
    assert tasks_dispatch_pending() == 1
    task = Task.objects.select_related("executor").get(public_id=response.json()["taskId"])
    assert (task.status, task.executor.in_flight) == ("running", 1)
    return task


def _output(task: Task, name: str = "1-out.png", *, recorded: bool = False) -> MediaObject:
    """An output as the worker hands it over: its bytes written, its row not yet (``recorded``:
    staged already, as an earlier attempt or another caller leaves it)."""
    data = solid_png(8, 8)
    written = {"user_id": task.user_id, "task_id": task.public_id, "filename": name,
               "stream": io.BytesIO(data), "mime_type": "image/png"}  # fmt: skip
    if recorded:
        media = media_store_output(**written, size=len(data), staged=True)
    else:
        media = media_write_output(**written)
        assert media.pk is None and not MediaObject.objects.filter(object_key=media.object_key)
    media.node_id = "9"
    return media


def _row(media: MediaObject) -> MediaObject:
    return MediaObject.objects.get(object_key=media.object_key)


@pytest.mark.parametrize("recorded", [False, True], ids=["written", "staged"])
def test_a_success_is_one_statement_and_ends_everything_once(
    comfy, api, funded, published, recorded
):
    task = _running(comfy, api, funded)
    media = _output(task, recorded=recorded)
    hold = Hold.objects.get(public_id=task.hold_id)
    with CaptureQueriesContext(connection) as finishing:
        done = task_finish(
            task_id=task.public_id,
            status="succeeded",
            attempt=1,
            outputs=[media],
            result={"kept": True},
        )
    if POSTGRESQL:
        # Outside a transaction the statement, with both events, is the whole transaction (no
        # BEGIN/COMMIT); the dispatch check after it is a read of its own.
        queries = [q["sql"] for q in finishing.captured_queries]
        assert [sql.split(" ", 1)[0] for sql in queries] == ["WITH", "SELECT"]
        for table in ("tasks_task", "integrations_executor", "wallet_hold", "wallet_account",
                      "wallet_ledgerentry", "media_app_mediaobject", "tasks_taskasset",
                      "realtime_eventcursor", "realtime_event"):  # fmt: skip
            assert f'"{table}"' in queries[0], table
    done.refresh_from_db()
    assert (done.status, done.progress, done.result, done.error_code) == (
        "succeeded",
        100,
        {"kept": True},
        "",
    )
    assert done.finished_at is not None
    assert Executor.objects.get(pk=task.executor_id).in_flight == 0
    hold.refresh_from_db()
    assert (hold.status, hold.deducted, hold.released) == ("confirmed", hold.points, 0)
    account = account_for_user(funded)
    account.refresh_from_db()
    assert (account.balance, account.frozen) == (1000 - hold.points, 0)
    charge = LedgerEntry.objects.get(hold=hold, type="confirm")
    assert (charge.points, charge.balance_after, charge.frozen_after) == (
        -hold.points,
        account.balance,
        0,
    )
    row = _row(media)
    assert (row.status, row.size, row.sha256, row.width, row.owner_id) == (
        MediaStatus.UPLOADED, media.size, media.sha256, 8, funded.pk
    )  # fmt: skip
    assert row.uploaded_at is not None and row.task_id == task.public_id
    asset = TaskAsset.objects.get(task=done)
    assert (asset.kind, asset.object_key, asset.node_id, asset.width) == (
        "output",
        media.object_key,
        "9",
        8,
    )
    # Published after the commit, as recorded, on consecutive seqs: the charge, then the end.
    mine = [e for e in published if e["taskId"] == task.public_id][-2:]
    assert [(e["type"], e["payload"]["status"]) for e in mine] == [
        ("wallet.points", "deducted"),
        ("task.status", "succeeded"),
    ]
    assert mine[0]["payload"]["balance"] == account.balance
    assert mine[1]["payload"]["outputs"] == [
        {
            "objectKey": media.object_key,
            "mimeType": "image/png",
            "size": media.size,
            "width": 8,
            "height": 8,
        }
    ]
    assert mine[1]["seq"] == mine[0]["seq"] + 1
    for event in mine:
        stored = Event.objects.get(public_id=event["id"])
        assert (stored.seq, stored.payload) == (event["seq"], event["payload"])
    # Once: the same finish again changes nothing.
    again = task_finish(task_id=task.public_id, status="succeeded", attempt=1, outputs=[media])
    assert again.status == "succeeded"
    assert Executor.objects.get(pk=task.executor_id).in_flight == 0
    assert LedgerEntry.objects.filter(hold=hold, type="confirm").count() == 1
    assert TaskAsset.objects.filter(task=done).count() == 1
    assert MediaObject.objects.filter(task_id=task.public_id).count() == 1
    assert _row(media).status == MediaStatus.UPLOADED


def test_an_overdue_hold_undoes_the_statement_and_the_task_fails_uncharged(comfy, api, funded):
    task = _running(comfy, api, funded)
    media = _output(task)
    Hold.objects.filter(public_id=task.hold_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    done = task_finish(task_id=task.public_id, status="succeeded", attempt=1, outputs=[media])
    assert (done.status, done.error_code) == ("failed", "TASK_HOLD_EXPIRED")
    # The slot was given back once, by the finish that failed the task, not also by the undone
    # statement; nothing of the success is left.
    assert Executor.objects.get(pk=task.executor_id).in_flight == 0
    assert Hold.objects.get(public_id=task.hold_id).status == "released"
    assert _row(media).status == MediaStatus.STAGED
    assert not TaskAsset.objects.filter(task__public_id=task.public_id).exists()
    account = account_for_user(funded)
    account.refresh_from_db()
    assert (account.balance, account.frozen) == (1000, 0)


def test_a_stale_attempt_changes_nothing(comfy, api, funded):
    task = _running(comfy, api, funded)
    media = _output(task)
    done = task_finish(task_id=task.public_id, status="succeeded", attempt=2, outputs=[media])
    assert (done.status, done.attempts) == ("running", 1)
    assert Executor.objects.get(pk=task.executor_id).in_flight == 1
    assert Hold.objects.get(public_id=task.hold_id).status == "held"
    assert _row(media).status == MediaStatus.STAGED


def test_inside_a_callers_transaction_the_events_are_recorded_with_it(
    comfy, api, funded, published
):
    task = _running(comfy, api, funded)
    media = _output(task)
    before = len(published)
    with transaction.atomic():
        done = task_finish(task_id=task.public_id, status="succeeded", attempt=1, outputs=[media])
        assert done.status == "succeeded"
        assert len(published) == before  # nothing is published before the caller's commit
    # Published after the caller's commit, as stored.
    mine = [e for e in published if e["taskId"] == task.public_id][-2:]
    assert [(e["type"], e["payload"]["status"]) for e in mine] == [
        ("wallet.points", "deducted"),
        ("task.status", "succeeded"),
    ]
    for event in mine:
        stored = Event.objects.get(public_id=event["id"])
        assert (stored.seq, stored.payload) == (event["seq"], event["payload"])
    assert Executor.objects.get(pk=task.executor_id).in_flight == 0
    assert _row(media).status == MediaStatus.UPLOADED


def test_a_task_with_a_callback_records_its_delivery_with_the_event(comfy, api, funded, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # a receiver on loopback; nothing is sent here
    make_ability("hooked", [make_executor("gpu-hooked", comfy.url)])
    client = api(funded)
    response = client.post(
        "/api/tasks/v1/submit",
        json={"action": "hooked", "callbackUrl": "http://127.0.0.1:9/hook"},
    )
    assert response.status_code == 202, response.text
    assert tasks_dispatch_pending() == 1
    task = Task.objects.get(public_id=response.json()["taskId"])
    done = task_finish(
        task_id=task.public_id, status="succeeded", attempt=1, outputs=[_output(task)]
    )
    assert done.status == "succeeded"
    assert Event.objects.filter(task_public_id=task.public_id, payload__status="succeeded").exists()
    assert WebhookDelivery.objects.filter(
        task_public_id=task.public_id, event_type="task.succeeded"
    ).exists()


def test_outputs_written_before_a_failing_one_stay_findable_by_the_sweep(comfy, api, funded):
    """The worker writes a run's outputs without their rows (the success records them); when a
    later one fails to download, the ones written are staged, so the sweep removes them."""
    task = _running(comfy, api, funded)

    def unreachable():
        raise ExecutorError("ComfyUI answered 502 on /view", permanent=False)

    outputs = [
        OutputFile(filename="caption.txt", node_id="3", kind="text", text="first"),
        OutputFile(filename="b.png", node_id="9", mime_type="image/png", open=unreachable),
    ]
    with pytest.raises(ExecutorError):
        _store_outputs(task, outputs)
    (row,) = MediaObject.objects.filter(task_id=task.public_id, purpose="output")
    assert (row.status, row.file_name, row.size) == (MediaStatus.STAGED, "3-caption.txt", 5)
    task_finish(task_id=task.public_id, status="failed", attempt=1, error_code="EXECUTOR_ERROR")
    assert tasks_sweep_staged_media() == 1
    assert not MediaObject.objects.filter(task_id=task.public_id, purpose="output").exists()


def test_each_attempt_writes_its_own_keys_and_a_late_one_never_overwrites_the_success(
    comfy, api, funded
):
    """Outputs are written without a read first, under keys of their attempt: the second
    attempt's success publishes its own bytes, and the first attempt's late conclusion (its
    worker was presumed dead) writes beside them and is swept."""
    first_run = _running(comfy, api, funded)

    def caption(text: str) -> list[OutputFile]:
        return [OutputFile(filename="caption.txt", node_id="3", kind="text", text=text)]

    assert task_requeue_or_fail(
        task_id=first_run.public_id, attempt=1, error_code="EXECUTOR_ERROR", error_message="x"
    ).status == "queued"  # fmt: skip
    time.sleep(1.1)  # the back-off after a first failure
    assert tasks_dispatch_pending() == 1
    second_run = Task.objects.get(pk=first_run.pk)
    assert (second_run.status, second_run.attempts) == ("running", 2)
    published_media = _store_outputs(second_run, caption("second"))
    done = task_finish(
        task_id=second_run.public_id, status="succeeded", attempt=2, outputs=published_media
    )
    assert done.status == "succeeded"
    (asset,) = TaskAsset.objects.filter(task=done)
    assert asset.object_key.endswith(f"/{first_run.public_id}/a2-3-caption.txt")

    late = _store_outputs(first_run, caption("first, late"))  # the loaded row says attempt 1
    assert late[0].object_key.endswith("/3-caption.txt")
    stale = task_finish(task_id=first_run.public_id, status="succeeded", attempt=1, outputs=late)
    assert (stale.status, stale.attempts) == ("succeeded", 2)
    with media_open(object_key=published_media[0].object_key) as stream:
        assert stream.read() == b"second"
    assert _row(late[0]).status == MediaStatus.STAGED
    assert tasks_sweep_staged_media() == 1
    assert list(MediaObject.objects.filter(task_id=first_run.public_id)) == [
        _row(published_media[0])
    ]
    assert _row(published_media[0]).status == MediaStatus.UPLOADED
