"""The access rule on the stream, walked as a table: principal kind × subscription → outcome.

The HTTP half, and the principal kinds, are in ``tests/podi/test_access_matrix.py``; the table
is in the README ("Who may see what"). Following a task uses the tasks app's registered
``"task"`` hook, which applies the same rule as ``GET /api/tasks/v1/{taskId}``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from podi.services import service_key_create
from tests.conftest import make_user
from tests.realtime.conftest import (
    assert_silent,
    db,
    emit_events,
    jwt,
    make_task,
    open_stream,
    receive,
    receive_events,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

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
# "own": the task is the principal's own; "follow": another user's it may follow;
# "refused": TASK_NOT_FOUND (unknown and invisible look the same); "4401": closed.
FOLLOW_TASK = {
    "owner": "own",
    "other": "refused",
    "staff": "follow",
    "bound_owner": "own",
    "bound_other": "refused",
    "svc_scoped": "follow",
    "svc_unscoped": "refused",
    "admin_key": "follow",
    "anon": "4401",
}
SUBSCRIBE_ALL = {
    "owner": "refused",
    "other": "refused",
    "staff": "follow",
    "bound_owner": "refused",
    "bound_other": "refused",
    "svc_scoped": "refused",
    "svc_unscoped": "refused",
    "admin_key": "follow",
    "anon": "4401",
}


def tokens_for(owner, other, staff) -> dict[str, str | None]:
    return {
        "owner": jwt(owner),
        "other": jwt(other),
        "staff": jwt(staff),
        "bound_owner": service_key_create(name="app-o", scopes=["tasks:read"], user=owner)[1],
        "bound_other": service_key_create(name="app-x", scopes=["tasks:read"], user=other)[1],
        "svc_scoped": service_key_create(name="crm", scopes=["tasks:read"])[1],
        "svc_unscoped": service_key_create(name="cms", scopes=["media:write"])[1],
        "admin_key": service_key_create(name="ops", scopes=["admin"])[1],
        "anon": None,
    }


@pytest.mark.parametrize(
    ("subscription", "expected"), [("task", FOLLOW_TASK), ("all", SUBSCRIBE_ALL)]
)
def test_stream_access_matrix(ws_server, subscription, expected):
    owner = make_user("owner")
    other = make_user("other")
    staff = make_user("staff", is_staff=True)
    task = make_task(owner)
    tokens = tokens_for(owner, other, staff)
    message = (
        {"action": "subscribe", "taskIds": [task.public_id]}
        if subscription == "task"
        else {"action": "subscribe", "all": True}
    )

    async def main():
        sockets = {}
        for name in PRINCIPALS:
            ws = await open_stream(ws_server, tokens[name])
            if expected[name] == "4401":
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 10)
                assert info.value.rcvd.code == 4401, name
                continue
            hello = await receive(ws)
            assert hello["type"] == "hello", (name, hello)
            await ws.send(json.dumps(message))
            reply = await receive(ws)
            if expected[name] == "refused":
                if subscription == "task":
                    assert reply == {"type": "subscribed", "taskIds": []}, name
                    reply = await receive(ws)
                    assert (reply["code"], reply["details"]) == (
                        "TASK_NOT_FOUND",
                        {"taskIds": [task.public_id]},
                    ), name
                else:
                    assert reply["code"] == "FORBIDDEN", name
            elif subscription == "task":
                assert reply == {"type": "subscribed", "taskIds": [task.public_id]}, name
            else:
                assert reply == {"type": "subscribed", "all": True}, name
            sockets[name] = ws

        sent = await db(emit_events, owner.pk, 1, task_id=task.public_id)
        for name, ws in sockets.items():
            # The owner's stream (a user-bound key's is its user's) always carries the event.
            own = name in ("owner", "bound_owner")
            if not own and expected[name] == "refused":
                await assert_silent(ws, 0.5)
                continue
            got = await receive_events(ws, 1)
            assert [e["id"] for e in got] == [sent[0]["id"]], name
            # Events of another user's stream carry that user's id; the caller's own do not.
            assert got[0].get("userId") == (None if own else owner.pk), name
        for ws in sockets.values():
            await ws.close()

    asyncio.run(main())
