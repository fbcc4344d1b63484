"""The task page: outputs inline (the thumbnail's signed URL serves the image), pretty JSON,
records linked both ways, Cancel / Retry as POST-only buttons with CSRF and a permission
check, the state view the page polls, and no Save."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.urls import reverse

from media_app.models import MediaObject
from tasks.models import Task, TaskAsset, TaskStatus
from tasks.services import task_submit
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor, wait_for
from wallet.models import Account, Hold, HoldStatus, LedgerEntry

pytestmark = pytest.mark.django_db(transaction=True)

PNG = b"\x89PNG\r\n\x1a\n"


def html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


@pytest.fixture
def done(worker, comfy, funded, settings):
    """A task that ran on the ComfyUI test server and saved one image."""
    settings.PUBLIC_BASE_URL = "http://testserver"
    make_ability("invert", [make_executor("gpu-1", comfy.url)], points=10)
    task = task_submit(user=funded, action="invert", params={"width": 8, "height": 6})
    wait_for(
        lambda: (
            Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
            and Hold.objects.get(public_id=task.hold_id).status == HoldStatus.CONFIRMED
        ),
        timeout=30,
    )
    return Task.objects.get(pk=task.pk)


@pytest.fixture
def queued(comfy, funded, queued_submits):
    """A task nobody runs (no worker, no start at submit): queued, its points held."""
    make_ability(
        "sleep", [make_executor("gpu-1", comfy.url)], graph=SLEEP_GRAPH, schema=SLEEP_SCHEMA
    )
    return task_submit(user=funded, action="sleep", params={"seconds": 1})


def test_succeeded_task_page_shows_the_image_and_links_every_record(console, done):
    page = html(console.get(f"/admin/tasks/task/{done.pk}/change/"))

    # The output inline: a thumbnail whose signed URL serves the PNG itself.
    thumbs = re.findall(r'<img class="podi-thumb" src="([^"]+)"', page)
    assert len(thumbs) == 1
    image = Client().get(urlsplit(thumbs[0].replace("&amp;", "&")).path)
    assert image.status_code == 200
    assert b"".join(image.streaming_content if image.streaming else [image.content]).startswith(PNG)

    # Params, result and events pretty-printed (indented JSON, not one line).
    assert '"width": 8,\n  "height": 6' in page.replace("&quot;", '"')
    assert "task.succeeded" in page or "task.status" in page

    # Read-only: no Save, and Cancel/Retry only when they apply (a success has neither).
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert 'id="task-cancel"' not in page and 'id="task-retry"' not in page
    events = reverse("admin:realtime_event_changelist") + f"?q={done.public_id}"
    assert f'href="{events}"' in page
    assert "state.json" not in page  # terminal: no live refresh

    # Task → user, hold, account, ledger entries, media object.
    hold = Hold.objects.get(public_id=done.hold_id)
    entries = LedgerEntry.objects.filter(task_id=done.public_id)
    media = MediaObject.objects.get(task_id=done.public_id)
    account = Account.objects.get(user=done.user)
    assert reverse("admin:auth_user_change", args=[done.user_id]) in page
    assert reverse("admin:wallet_hold_by_public_id", args=[hold.public_id]) in page
    assert reverse("admin:wallet_account_change", args=[account.pk]) in page
    assert entries.count() == 2  # the freeze and the confirm
    for entry in entries:
        assert reverse("admin:wallet_ledgerentry_change", args=[entry.pk]) in page
    assert reverse("admin:media_app_mediaobject_change", args=[media.pk]) in page

    # ... and back: hold → task, its entries, user, account.
    task_link = reverse("admin:tasks_task_by_public_id", args=[done.public_id])
    response = console.get(reverse("admin:wallet_hold_by_public_id", args=[hold.public_id]))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:wallet_hold_change", args=[hold.pk])
    hold_page = html(console.get(response["Location"]))
    assert task_link in hold_page
    assert reverse("admin:auth_user_change", args=[done.user_id]) in hold_page
    assert reverse("admin:wallet_account_change", args=[account.pk]) in hold_page
    for entry in entries:
        assert reverse("admin:wallet_ledgerentry_change", args=[entry.pk]) in hold_page
    # ledger entry → task, hold, user, account
    entry_page = html(
        console.get(reverse("admin:wallet_ledgerentry_change", args=[entries.first().pk]))
    )
    for url in (
        task_link,
        reverse("admin:wallet_hold_change", args=[hold.pk]),
        reverse("admin:auth_user_change", args=[done.user_id]),
        reverse("admin:wallet_account_change", args=[account.pk]),
    ):
        assert url in entry_page
    # media object → task, owner; the task link resolves to the task page
    media_page = html(console.get(reverse("admin:media_app_mediaobject_change", args=[media.pk])))
    assert task_link in media_page
    assert reverse("admin:auth_user_change", args=[done.user_id]) in media_page
    resolved = console.get(task_link)
    assert resolved["Location"] == reverse("admin:tasks_task_change", args=[done.pk])
    assert (
        console.get(reverse("admin:tasks_task_by_public_id", args=["tsk_nope"])).status_code == 404
    )
    # lists link too: the task list names the hold, the ledger list the task
    task_list = html(console.get("/admin/tasks/task/"))
    assert reverse("admin:wallet_hold_by_public_id", args=[hold.public_id]) in task_list
    assert task_link in html(console.get("/admin/wallet/ledgerentry/"))
    assert task_link in html(console.get("/admin/wallet/hold/"))
    assert task_link in html(console.get("/admin/media_app/mediaobject/"))


def test_running_task_page_refreshes_itself_and_offers_cancel(console, queued):
    page = html(console.get(f"/admin/tasks/task/{queued.pk}/change/"))
    assert 'id="task-cancel"' in page
    assert 'id="task-retry"' not in page
    state_url = reverse("admin:tasks_task_state", args=[queued.pk])
    assert state_url in page
    assert "Not yet: the page refreshes while the task runs." in page
    state = console.get(state_url)
    assert "no-store" in state["Cache-Control"]
    assert state.json() == {
        "taskId": queued.public_id,
        "status": "queued",
        "progress": 0,
        "terminal": False,
        "updatedAt": Task.objects.get(pk=queued.pk).updated_at.isoformat(),
    }
    assert Client().get(state_url).status_code == 302  # staff only: to the login page


def test_cancel_and_retry_are_post_only_csrf_checked_and_need_the_permission(
    staff, operator, queued
):
    cancel = reverse("admin:tasks_task_cancel", args=[queued.pk])
    retry = reverse("admin:tasks_task_retry", args=[queued.pk])
    hold = Hold.objects.get(public_id=queued.hold_id)

    def unchanged():
        assert Task.objects.get(pk=queued.pk).status == TaskStatus.QUEUED
        assert Hold.objects.get(pk=hold.pk).status == HoldStatus.HELD
        assert Task.objects.count() == 1

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff)
    assert strict.get(cancel).status_code == 405
    unchanged()
    assert strict.post(cancel).status_code == 403  # no CSRF token
    unchanged()
    assert operator.post(cancel).status_code == 403  # view permission only
    assert "task-cancel" not in html(operator.get(f"/admin/tasks/task/{queued.pk}/change/"))
    unchanged()

    # With the token, from the page's own form.
    page = html(strict.get(f"/admin/tasks/task/{queued.pk}/change/"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = strict.post(cancel, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert Task.objects.get(pk=queued.pk).status == TaskStatus.CANCELED
    assert Hold.objects.get(pk=hold.pk).status == HoldStatus.RELEASED
    page = html(strict.get(response["Location"]))
    assert "its points were released" in page
    assert 'id="task-retry"' in page and 'id="task-cancel"' not in page

    # Canceling again: a clear message, nothing changes.
    again = strict.post(cancel, {"csrfmiddlewaretoken": token}, follow=True)
    assert "The task has already finished." in html(again)
    assert Task.objects.count() == 1

    assert operator.post(retry).status_code == 403
    assert Task.objects.count() == 1
    response = strict.post(retry, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    retried = Task.objects.get(original_task=queued)
    assert response["Location"] == reverse("admin:tasks_task_change", args=[retried.pk])
    assert retried.status == TaskStatus.QUEUED


def test_the_task_page_has_no_save(console, queued):
    url = f"/admin/tasks/task/{queued.pk}/change/"
    page = html(console.get(url))
    assert 'type="submit" value="Save"' not in page and 'name="_save"' not in page
    response = console.post(url, {"status": "succeeded", "_save": "Save"})
    assert response.status_code == 403
    assert "changed successfully" not in response.content.decode()
    assert Task.objects.get(pk=queued.pk).status == TaskStatus.QUEUED
    assert json.loads(json.dumps(Task.objects.get(pk=queued.pk).params)) == {"seconds": 1}


def test_text_audio_and_video_outputs_are_shown_inline(console, queued, settings):
    settings.PUBLIC_BASE_URL = "http://testserver"
    Task.objects.filter(pk=queued.pk).update(
        status=TaskStatus.SUCCEEDED, result={"text": "Hello <b>there</b>", "promptId": "p-1"}
    )
    for key, mime in (("results/a.mp3", "audio/mpeg"), ("results/v.mp4", "video/mp4")):
        TaskAsset.objects.create(task=queued, kind="output", object_key=key, mime_type=mime)
    page = html(console.get(f"/admin/tasks/task/{queued.pk}/change/"))
    assert '<pre style="white-space:pre-wrap;margin:0">Hello &lt;b&gt;there&lt;/b&gt;</pre>' in page
    assert "<b>promptId</b>" not in page  # an id, not text the task produced
    assert re.search(
        r'<audio class="podi-audio" controls preload="none" src="http://testserver/', page
    )
    assert re.search(
        r'<video class="podi-video" controls preload="metadata" src="http://testserver/', page
    )
