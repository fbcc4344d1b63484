"""The access rule over HTTP, walked as a table: principal kind × object × action → status.

The same table is in the README ("Who may see what"); docs/architecture.md §5. Every object
belongs to ``owner``. Principal kinds:

* ``owner`` / ``other`` / ``staff``: users with a JWT;
* ``bound_owner`` / ``bound_other``: keys created for ``owner`` / ``other`` (``--user``), with the
  area's scope;
* ``svc_scoped`` / ``svc_unscoped``: service-account keys (``svc-<name>``) with / without the
  area's scope (the latter has another area's);
* ``admin_key``: a service-account key with ``admin``;
* ``anon``: no credentials.

The WebSocket half (following a task on the stream) is ``tests/realtime/test_access_matrix.py``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pytest

from integrations.models import Ability
from media_app.models import MediaObject, MediaStatus
from media_app.services import file_put
from podi.ids import new_id
from podi.realtime.events import emit
from podi.realtime.models import Event
from podi.services import service_key_create
from tasks.models import Task, TaskBatch, TaskStatus
from tests.conftest import Client, access_token, make_user
from wallet.models import Hold, HoldStatus
from wallet.selectors import account_for_user
from wallet.services import hold_freeze, wallet_grant

PRINCIPALS = (
    "owner",
    "other",
    "staff",
    "bound_owner",
    "bound_other",
    "svc_scoped",
    "svc_unscoped",
    "admin_key",
    "anon",
)
# The scope of each area, and a scope that is not (for svc_unscoped).
AREA_SCOPE = {
    "tasks": "tasks:write",
    "wallet": "wallet:write",
    "media": "media:write",
    "notify": "notify:write",
}
OTHER_SCOPE = {"tasks": "media:write", "wallet": "tasks:write", "media": "tasks:write"}
OTHER_SCOPE["notify"] = "tasks:write"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def row(**statuses: int) -> dict[str, int]:
    """An owned object: the owner and everyone acting for anyone in the area see it; others
    get 404; a key without the area's scope 403 (``FORBIDDEN``); no credentials 401."""
    base = {
        "owner": 200,
        "other": 404,
        "staff": 200,
        "bound_owner": 200,
        "bound_other": 404,
        "svc_scoped": 200,
        "svc_unscoped": 403,
        "admin_key": 200,
        "anon": 401,
    }
    return {**base, **statuses}


@dataclass
class World:
    owner: Any
    other: Any
    staff: Any
    task: Task
    batch: TaskBatch
    hold: Hold
    task_hold: Hold
    media: MediaObject
    file_path: str
    tokens: dict[str, str | None]


def build_world(area: str) -> World:
    owner = make_user("owner")
    other = make_user("other")
    staff = make_user("staff", is_staff=True)
    scope = AREA_SCOPE[area]
    tokens: dict[str, str | None] = {
        "owner": access_token(owner),
        "other": access_token(other),
        "staff": access_token(staff),
        "bound_owner": service_key_create(name="app-o", scopes=[scope], user=owner)[1],
        "bound_other": service_key_create(name="app-x", scopes=[scope], user=other)[1],
        "svc_scoped": service_key_create(name="crm", scopes=[scope])[1],
        "svc_unscoped": service_key_create(name="cms", scopes=[OTHER_SCOPE[area]])[1],
        "admin_key": service_key_create(name="ops", scopes=["admin"])[1],
        "anon": None,
    }
    ability, _ = Ability.objects.get_or_create(code="upscale", defaults={"display_name": "Up"})
    batch = TaskBatch.objects.create(public_id=new_id("bat"), user=owner, action="upscale")
    task = Task.objects.create(
        public_id=new_id("tsk"), user=owner, ability=ability, action="upscale", batch=batch
    )
    emit(
        user_id=owner.pk,
        type="task.status",
        payload={"taskId": task.public_id},
        task_id=task.public_id,
    )
    wallet_grant(user=owner, points=100, reason="seed")
    hold, _ = hold_freeze(user=owner, task_id="order-1", points=10, owner_settles=True)
    task_hold, _ = hold_freeze(user=owner, task_id=task.public_id, points=10)
    media = MediaObject.objects.create(
        object_key=f"uploads/{owner.pk}/20260101/a.png",
        owner=owner,
        backend="local",
        size=3,
        mime_type="image/png",
        status=MediaStatus.UPLOADED,
    )
    file_put(
        user=owner,
        path="shared/a.txt",
        stream=io.BytesIO(b"abc"),
        mime_type="text/plain",
        file_name="a.txt",
    )
    return World(owner, other, staff, task, batch, hold, task_hold, media, "shared/a.txt", tokens)


# (object, action, area, expected statuses, request(world) → (method, path, body), unchanged?)
CASES = [
    (
        "task",
        "read",
        "tasks",
        row(),
        lambda w: ("get", f"/api/tasks/v1/{w.task.public_id}", None),
        None,
    ),
    (
        "task",
        "cancel",
        "tasks",
        row(),
        lambda w: ("post", f"/api/tasks/v1/{w.task.public_id}/cancel", {}),
        lambda w: Task.objects.get(pk=w.task.pk).status == TaskStatus.QUEUED,
    ),
    (
        "task list",
        "read (userId=owner)",
        "tasks",
        row(other=403, bound_other=403),
        lambda w: ("get", f"/api/tasks/v1?userId={w.owner.pk}", None),
        None,
    ),
    (
        "batch",
        "read",
        "tasks",
        row(),
        lambda w: ("get", f"/api/tasks/v1/batches/{w.batch.public_id}", None),
        None,
    ),
    (
        "event",
        "read (task events)",
        "tasks",
        row(),
        lambda w: ("get", f"/api/tasks/v1/{w.task.public_id}/events", None),
        None,
    ),
    (
        "hold",
        "settle (release)",
        "wallet",
        row(),
        lambda w: ("post", "/api/wallet/v1/release", {"holdId": w.hold.public_id}),
        lambda w: Hold.objects.get(pk=w.hold.pk).status == HoldStatus.HELD,
    ),
    (
        "hold of a task",
        "settle (confirm)",
        "wallet",
        row(owner=403, bound_owner=403),
        lambda w: ("post", "/api/wallet/v1/confirm", {"holdId": w.task_hold.public_id}),
        lambda w: Hold.objects.get(pk=w.task_hold.pk).status == HoldStatus.HELD,
    ),
    (
        "account",
        "read (balance?userId=owner)",
        "wallet",
        row(other=403, bound_other=403),
        lambda w: ("get", f"/api/wallet/v1/balance?userId={w.owner.pk}", None),
        None,
    ),
    (
        "account",
        "write (grant)",
        "wallet",
        row(owner=403, other=403, bound_owner=403, bound_other=403),
        lambda w: ("post", "/api/wallet/v1/grant", {"userId": w.owner.pk, "points": 5}),
        lambda w: account_for_user(w.owner).balance == 80,
    ),
    (
        "media object",
        "read (signed-download)",
        "media",
        row(other=403, bound_other=403),
        lambda w: ("post", "/api/media/v1/signed-download", {"objectKey": w.media.object_key}),
        None,
    ),
    (
        "media object",
        "write (complete)",
        "media",
        row(),
        lambda w: ("post", "/api/media/v1/complete", {"objectKey": w.media.object_key}),
        None,
    ),
    (
        "file",
        "delete",
        "media",
        row(owner=403, other=403, bound_owner=403, bound_other=403),
        lambda w: ("delete", f"/api/media/v1/files/{w.file_path}", None),
        lambda w: MediaObject.objects.filter(
            object_key__endswith="shared/a.txt", status=MediaStatus.UPLOADED
        ).exists(),
    ),
    (
        "event",
        "write (notify event, userId=owner)",
        "notify",
        row(
            owner=403,
            other=403,
            bound_other=403,
            staff=201,
            bound_owner=201,
            svc_scoped=201,
            admin_key=201,
        ),
        lambda w: ("post", "/api/notify/v1/event", {"userId": w.owner.pk, "type": "x.y"}),
        lambda w: not Event.objects.filter(type="x.y").exists(),
    ),
]


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize(
    ("kind", "action", "area", "expected", "make_request", "unchanged"),
    CASES,
    ids=[f"{case[0]}:{case[1]}" for case in CASES],
)
def test_access_matrix(db, principal, kind, action, area, expected, make_request, unchanged):
    world = build_world(area)
    method, path, body = make_request(world)
    client = Client(world.tokens[principal])
    response = (
        getattr(client, method)(path, body) if body is not None else getattr(client, method)(path)
    )
    assert response.status_code == expected[principal], (principal, response.content[:300])
    if response.status_code >= 400:
        assert set(response.json()) == {"code", "message", "details"}
        if unchanged is not None:
            assert unchanged(world), "a refused request changed something"


def test_the_matrix_covers_every_principal_kind():
    for case in CASES:
        assert set(case[3]) == set(PRINCIPALS), case[:2]
