"""Task API rules: refusals change nothing, idempotency, batches, templates, receipts, access."""

from __future__ import annotations

import io

import pytest
from django.db import OperationalError, connections
from django.db.backends.signals import connection_created

from integrations.models import Ability
from media_app.models import MediaObject
from media_app.services import media_store_output
from podi.ids import new_id
from podi.models import IdempotencyRecord
from podi.realtime.models import Event
from tasks.models import Task, TaskBatch, TaskStatus, TaskTemplate
from tasks.services import task_token, tasks_dispatch_pending
from tests.servers.comfyui import solid_png
from tests.tasks.conftest import SLEEP_GRAPH, SLEEP_SCHEMA, make_ability, make_executor, wait_status
from wallet.models import Hold, LedgerEntry
from wallet.selectors import account_for_user
from wallet.services import wallet_grant

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "x-podi-media": True},
    },
    "required": ["image"],
    "additionalProperties": False,
}
IMAGE_GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}


def nothing_created(user, ledger_before: int) -> None:
    assert Task.objects.count() == 0
    assert Hold.objects.count() == 0
    assert LedgerEntry.objects.filter(account__user=user).count() == ledger_before
    assert not Event.objects.filter(type="task.status").exists()


def uploaded(owner, key_suffix="a.png") -> MediaObject:
    return MediaObject.objects.create(
        object_key=f"uploads/{owner.pk}/20261123/{new_id('m')}-{key_suffix}",
        owner=owner,
        size=10,
        mime_type="image/png",
        status="uploaded",
        purpose="input",
    )


@pytest.fixture
def ability(comfy):
    return make_ability(
        "sleep",
        [make_executor("gpu-1", comfy.url)],
        graph=SLEEP_GRAPH,
        schema=SLEEP_SCHEMA,
        points=10,
    )


def test_refused_submits_leave_nothing(ability, owner, outsider, api):
    wallet_grant(user=owner, points=5, reason="too little", reference="r1")
    before = LedgerEntry.objects.filter(account__user=owner).count()
    client = api(owner)

    poor = client.post("/api/tasks/v1/submit", json={"action": "sleep"})
    assert poor.status_code == 402
    assert poor.json()["code"] == "WALLET_INSUFFICIENT"
    nothing_created(owner, before)

    wallet_grant(user=owner, points=100, reason="more", reference="r2")
    before = LedgerEntry.objects.filter(account__user=owner).count()
    bad = client.post("/api/tasks/v1/submit", json={"action": "sleep", "params": {"seconds": "x"}})
    assert bad.status_code == 400
    assert bad.json()["code"] == "VALIDATION_ERROR"
    assert "seconds" in bad.json()["details"]["fields"]
    unknown_param = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "params": {"nope": 1}}
    )
    assert unknown_param.status_code == 400
    unknown = client.post("/api/tasks/v1/submit", json={"action": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "ABILITY_NOT_FOUND"
    theirs = uploaded(outsider)
    foreign = client.post(
        "/api/tasks/v1/submit",
        json={"action": "sleep", "inputs": [{"objectKey": theirs.object_key}]},
    )
    assert foreign.status_code == 400
    assert "inputs[0].objectKey" in foreign.json()["details"]["fields"]
    private_callback = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "callbackUrl": "http://127.0.0.1:9/hook"}
    )
    assert private_callback.status_code == 400
    assert "callbackUrl" in private_callback.json()["details"]["fields"]
    nothing_created(owner, before)


def test_no_executor_is_503(owner, api, funded):
    Ability.objects.create(code="orphan", display_name="Orphan", points=1)
    response = api(funded).post("/api/tasks/v1/submit", json={"action": "orphan"})
    assert response.status_code == 503
    assert response.json()["code"] == "NO_EXECUTOR"
    assert Task.objects.count() == 0


def test_idempotent_submit(ability, funded, api):
    client = api(funded)
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/api/tasks/v1/submit", json={"action": "sleep"}, headers=headers)
    second = client.post("/api/tasks/v1/submit", json={"action": "sleep"}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert Task.objects.count() == 1
    assert Hold.objects.count() == 1
    other = client.post(
        "/api/tasks/v1/submit", json={"action": "sleep", "priority": 3}, headers=headers
    )
    assert other.status_code == 409
    assert other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_others_cannot_see_or_touch_a_task(ability, funded, outsider, staff, api, service_key):
    task_id = api(funded).post("/api/tasks/v1/submit", json={"action": "sleep"}).json()["taskId"]
    stranger = api(outsider)
    for method, path in [
        ("get", f"/api/tasks/v1/{task_id}"),
        ("get", f"/api/tasks/v1/{task_id}/events"),
        ("post", f"/api/tasks/v1/{task_id}/cancel"),
        ("post", f"/api/tasks/v1/{task_id}/retry"),
    ]:
        response = getattr(stranger, method)(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "TASK_NOT_FOUND"
    assert stranger.get("/api/tasks/v1").json()["total"] == 0
    assert Task.objects.get(public_id=task_id).status != TaskStatus.CANCELED
    assert api(staff).get(f"/api/tasks/v1/{task_id}").status_code == 200
    _, raw = service_key(scopes=["tasks:read"])
    assert api(raw).get(f"/api/tasks/v1/{task_id}").status_code == 200
    _, media_only = service_key(scopes=["media:write"], name="m")
    assert api(media_only).get(f"/api/tasks/v1/{task_id}").status_code == 403


def test_service_key_submits_on_behalf_of_a_user(ability, funded, outsider, service_key, api):
    _, raw = service_key(scopes=["tasks:write"])
    response = api(raw).post("/api/tasks/v1/submit", json={"action": "sleep", "userId": funded.pk})
    assert response.status_code == 202
    task = Task.objects.get(public_id=response.json()["taskId"])
    assert task.user == funded
    assert task.service_key is not None
    refused = api(outsider).post(
        "/api/tasks/v1/submit", json={"action": "sleep", "userId": funded.pk}
    )
    assert refused.status_code == 403


def test_list_filters_and_pagination(ability, funded, api):
    client = api(funded)
    ids = [
        client.post("/api/tasks/v1/submit", json={"action": "sleep", "clientRef": f"c{i}"}).json()[
            "taskId"
        ]
        for i in range(3)
    ]
    Task.objects.filter(public_id=ids[0]).update(status=TaskStatus.FAILED)
    page = client.get("/api/tasks/v1", params={"pageSize": 2}).json()
    assert page["total"] == 3
    assert page["totalPages"] == 2
    assert [t["taskId"] for t in page["items"]] == [ids[2], ids[1]]
    failed = client.get("/api/tasks/v1", params={"status": "failed"}).json()
    assert [t["taskId"] for t in failed["items"]] == [ids[0]]
    assert client.get("/api/tasks/v1", params={"status": "bogus"}).status_code == 400


def test_retry_makes_a_new_task_and_only_for_failed_or_canceled(ability, funded, api):
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "sleep"}).json()["taskId"]
    refused = client.post(f"/api/tasks/v1/{task_id}/retry")
    assert refused.status_code == 409
    assert refused.json()["code"] == "TASK_NOT_RETRYABLE"
    client.post(f"/api/tasks/v1/{task_id}/cancel")
    retried = client.post(f"/api/tasks/v1/{task_id}/retry")
    assert retried.status_code == 202
    body = retried.json()
    assert body["originalTaskId"] == task_id
    assert body["taskId"] != task_id
    assert Task.objects.get(public_id=body["taskId"]).original_task.public_id == task_id


def test_batch_is_all_or_nothing(ability, owner, api):
    wallet_grant(user=owner, points=25, reason="t", reference="b")
    client = api(owner)
    too_many = client.post("/api/tasks/v1/batches", json={"action": "sleep", "items": [{}, {}, {}]})
    assert too_many.status_code == 402
    assert (
        Task.objects.count() == 0 and TaskBatch.objects.count() == 0 and Hold.objects.count() == 0
    )
    bad_item = client.post(
        "/api/tasks/v1/batches",
        json={"action": "sleep", "items": [{}, {"params": {"seconds": -1}}]},
    )
    assert bad_item.status_code == 400
    assert "items[1].params.seconds" in bad_item.json()["details"]["fields"] or any(
        k.startswith("items[1]") for k in bad_item.json()["details"]["fields"]
    )
    assert Task.objects.count() == 0
    ok = client.post(
        "/api/tasks/v1/batches",
        json={"action": "sleep", "items": [{}, {"params": {"seconds": 0.1}}]},
    )
    assert ok.status_code == 202
    body = ok.json()
    assert body["points"] == 20
    assert len(body["taskIds"]) == 2
    summary = client.get(f"/api/tasks/v1/batches/{body['batchId']}").json()
    assert summary["total"] == 2
    for task_id in body[
        "taskIds"
    ]:  # a task's detail names its batch and, once placed, its executor
        detail = client.get(f"/api/tasks/v1/{task_id}").json()
        assert detail["taskId"] == task_id and detail["batchId"] == body["batchId"]
        placed = Task.objects.select_related("executor").get(public_id=task_id).executor
        assert detail["executor"] == (placed.name if placed else None)
    assert (
        summary["counts"]["queued"] + summary["counts"]["running"] + summary["counts"]["succeeded"]
        == 2
    )
    assert account_for_user(owner).frozen + account_for_user(owner).balance == 25


def test_template_creates_a_batch(ability, funded, api):
    TaskTemplate.objects.create(
        public_id="tpl_demo",
        name="Three naps",
        ability=ability,
        params={"seconds": 0.1},
        items=[{"params": {}}, {"params": {"seconds": 0.2}}, {"params": {}}],
    )
    client = api(funded)
    listing = client.get("/api/tasks/v1/templates").json()
    assert listing["items"][0]["id"] == "tpl_demo"
    assert listing["items"][0]["itemCount"] == 3
    created = client.post(
        "/api/tasks/v1/templates/tpl_demo/create-task", json={"overrides": {"seconds": 0.3}}
    )
    assert created.status_code == 202
    tasks = Task.objects.filter(public_id__in=created.json()["taskIds"])
    assert sorted(t.params["seconds"] for t in tasks) == [0.3, 0.3, 0.3]
    missing = client.post("/api/tasks/v1/templates/tpl_nope/create-task", json={})
    assert missing.status_code == 404
    assert missing.json()["code"] == "TEMPLATE_NOT_FOUND"


@pytest.mark.usefixtures("queued_submits")
def test_complete_receipt_with_the_task_token(ability, funded, api):
    client = api(funded)
    task_id = client.post("/api/tasks/v1/submit", json={"action": "sleep"}).json()["taskId"]
    assert tasks_dispatch_pending() == 1  # a token is issued to a running attempt
    task = Task.objects.get(public_id=task_id)
    anon = api()
    assert (
        anon.post(f"/api/tasks/v1/{task_id}/complete", json={"status": "succeeded"}).status_code
        == 401
    )
    other_id = client.post("/api/tasks/v1/submit", json={"action": "sleep"}).json()["taskId"]
    wrong = anon.post(
        f"/api/tasks/v1/{other_id}/complete",
        json={"status": "succeeded"},
        headers={"Authorization": f"Bearer {task_token(task)}"},
    )
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "TASK_TOKEN_INVALID"
    done = anon.post(
        f"/api/tasks/v1/{task_id}/complete",
        json={"status": "succeeded", "result": {"caption": "a cat"}},
        headers={"Authorization": f"Bearer {task_token(task)}"},
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"
    assert done.json()["result"] == {"caption": "a cat"}
    assert Hold.objects.get(public_id=task.hold_id).status == "confirmed"
    again = anon.post(
        f"/api/tasks/v1/{task_id}/complete",
        json={"status": "failed"},
        params={"token": task_token(task)},
    )
    assert again.status_code == 409
    assert again.json()["code"] == "TASK_ALREADY_FINISHED"


def test_media_param_is_filled_from_inputs(comfy, worker, funded, api):
    executor = make_executor("gpu-1", comfy.url)
    make_ability(
        "invert-image",
        [executor],
        graph=IMAGE_GRAPH,
        schema=IMAGE_SCHEMA,
        points=2,
        requires_image=True,
    )

    data = solid_png(4, 3, (255, 0, 0))
    media = media_store_output(
        user_id=funded.pk,
        task_id="upload",
        filename="red.png",
        stream=io.BytesIO(data),
        mime_type="image/png",
    )
    client = api(funded)
    missing = client.post("/api/tasks/v1/submit", json={"action": "invert-image"})
    assert missing.status_code == 400
    task_id = client.post(
        "/api/tasks/v1/submit",
        json={"action": "invert-image", "inputs": [{"objectKey": media.object_key}]},
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["params"]["image"] == media.object_key
    upload = comfy.uploads[-1]
    assert upload["subfolder"] == f"podi/{task_id}"
    (sent,) = comfy.prompts.values()
    assert sent["prompt"]["1"]["inputs"]["image"] == f"podi/{task_id}/{upload['name']}"
    assert (done["outputs"][0]["width"], done["outputs"][0]["height"]) == (4, 3)


def test_invoke_waits_for_the_result(comfy, worker, funded, api):
    ability = make_ability("invert", [make_executor("gpu-1", comfy.url)], points=1)
    client = api(funded)
    response = client.post(
        f"/api/abilities/{ability.pk}/invoke",
        json={"params": {"width": 2, "height": 2}, "wait": 20},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    comfy.node_delay = 2
    slow = client.post(f"/api/abilities/{ability.pk}/invoke", json={"wait": 0})
    assert slow.status_code == 202
    assert slow.json()["taskId"].startswith("tsk_")
    missing = client.post("/api/abilities/999999/invoke", json={})
    assert missing.status_code == 404


def test_media_param_from_an_input_url(comfy, worker, funded, api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the image is served on loopback in this test
    comfy.add_input_file("green.png", solid_png(2, 5, (0, 255, 0)))
    image_url = f"{comfy.url}/view?filename=green.png&type=input"
    executor = make_executor("gpu-1", comfy.url)
    make_ability("invert-image", [executor], graph=IMAGE_GRAPH, schema=IMAGE_SCHEMA, points=2)
    client = api(funded)
    task_id = client.post(
        "/api/tasks/v1/submit", json={"action": "invert-image", "inputs": [{"url": image_url}]}
    ).json()["taskId"]
    done = wait_status(client, task_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["params"]["image"] == image_url
    assert (done["outputs"][0]["width"], done["outputs"][0]["height"]) == (2, 5)


def test_input_url_to_a_private_address_is_refused(ability, funded, api):
    client = api(funded)
    response = client.post(
        "/api/tasks/v1/submit",
        json={"action": "sleep", "inputs": [{"url": "http://169.254.169.254/latest/meta-data"}]},
    )
    assert response.status_code == 400
    assert "inputs[0].url" in response.json()["details"]["fields"]
    assert Task.objects.count() == 0


def test_priority_is_bounded_for_users_but_not_for_staff_or_admin_keys(
    ability, funded, staff, service_key, api, settings
):
    settings.TASK_USER_PRIORITY_MAX = 10
    ledger_before = LedgerEntry.objects.filter(account__user=funded).count()
    user_client = api(funded)
    _, partner_raw = service_key(scopes=["tasks:write"], user=funded)
    # A key created for a user acts only as that user, whatever its scopes (README "Who may see
    # what"): bounded like the user.
    _, bound_admin_raw = service_key(scopes=["admin"], name="bound-ops", user=funded)
    for client in (user_client, api(partner_raw), api(bound_admin_raw)):
        for priority in (11, -11, 100):
            refused = client.post(
                "/api/tasks/v1/submit", json={"action": "sleep", "priority": priority}
            )
            assert refused.status_code == 400, refused.text
            assert refused.json()["code"] == "VALIDATION_ERROR"
            assert list(refused.json()["details"]["fields"]) == ["priority"]
    nothing_created(funded, ledger_before)

    edge = user_client.post("/api/tasks/v1/submit", json={"action": "sleep", "priority": 10})
    assert edge.status_code == 202, edge.text
    _, admin_raw = service_key(scopes=["admin"], name="ops")  # a service account
    for client in (api(staff), api(admin_raw)):
        top = client.post(
            "/api/tasks/v1/submit",
            json={"action": "sleep", "priority": 100, "userId": funded.pk},
        )
        assert top.status_code == 202, top.text
    assert sorted(Task.objects.values_list("priority", flat=True)) == [10, 100, 100]


def test_a_submit_commits_with_its_idempotency_record(ability, funded, api):
    """The database refuses to mark the key completed (the process could as well die there):
    the submit must roll back with it, so the retry runs it once; before, the task stayed, the
    key stayed "in progress" (409 for 2 min) and a later retry made a second task."""
    table = IdempotencyRecord._meta.db_table
    refusing = [True]  # the server thread's connection keeps the wrapper: switched off below

    def refuse_completion(execute, sql, params, many, context):
        if refusing[0] and sql.startswith(f'UPDATE "{table}"') and "completed" in sql:
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    def install(connection, **_):
        if refuse_completion not in connection.execute_wrappers:
            connection.execute_wrappers.append(refuse_completion)

    def uninstall():
        refusing[0] = False
        connection_created.disconnect(install)
        for each in connections.all():
            if refuse_completion in each.execute_wrappers:
                each.execute_wrappers.remove(refuse_completion)

    client = api(funded)
    headers = {"Idempotency-Key": "order-43"}
    connection_created.connect(install)
    for each in connections.all():
        install(each)
    try:
        failed = client.post("/api/tasks/v1/submit", json={"action": "sleep"}, headers=headers)
    finally:
        uninstall()
    assert failed.status_code == 503, failed.text
    assert Task.objects.count() == 0
    assert Hold.objects.count() == 0
    retried = client.post("/api/tasks/v1/submit", json={"action": "sleep"}, headers=headers)
    assert retried.status_code == 202, retried.text
    again = client.post("/api/tasks/v1/submit", json={"action": "sleep"}, headers=headers)
    assert again.json() == retried.json()
    assert Task.objects.count() == 1
    assert Hold.objects.count() == 1
