"""``/api/notify/v1/stream`` with real WebSocket clients against a real Daphne (see conftest)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from rest_framework_simplejwt.tokens import AccessToken
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from podi.auth import access_tokens_revoke
from podi.ids import new_id
from podi.realtime.consumers import MAX_REPLAY
from podi.realtime.models import Event, EventCursor
from podi.realtime.services import event_record
from podi.services import service_key_revoke
from tests.realtime.conftest import (
    CONTROL_TYPES,
    PRODUCTION,
    ROOT,
    assert_silent,
    db,
    emit_events,
    jwt,
    make_task,
    open_stream,
    raw_handshake,
    receive,
    receive_events,
    subprocess_env,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

EVENT_KEYS = {"id", "seq", "type", "payload", "timestamp"}


def run(coro):
    return asyncio.run(coro)


async def expect_close(ws, code: int) -> None:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(5):
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == code


async def hello(ws) -> dict:
    message = await receive(ws)
    assert message["type"] == "hello", message
    return message


def record_without_publishing(user_id: int, n: int) -> dict:
    """Persist an event the way emit() does, but lose its publication (a crashed publisher)."""

    with transaction.atomic():
        return event_record(
            {
                "id": new_id("evt"),
                "seq": None,
                "type": "task.progress",
                "userId": user_id,
                "taskId": None,
                "payload": {"n": n, "lost": True},
                "timestamp": datetime.now(UTC).isoformat(),
            }
        )


# --- Authentication ---------------------------------------------------------------------------


def test_without_a_valid_token_the_socket_is_closed_with_4401(ws_server, owner, service_key):
    expired = AccessToken.for_user(owner)
    expired.set_exp(lifetime=timedelta(seconds=-5))
    key, raw = service_key(scopes=["tasks:read"])
    service_key_revoke(key=key)

    async def main():
        for token in [None, "garbage", "psk_not-a-key", str(expired), raw]:
            ws = await open_stream(ws_server, token)
            await expect_close(ws, 4401)
        ws = await open_stream(ws_server, "x", subprotocols=["bearer.not-a-jwt"])
        assert ws.subprotocol == "bearer.not-a-jwt"
        await expect_close(ws, 4401)

    run(main())


def test_hello_ping_and_token_as_subprotocol(ws_server, owner):
    token = jwt(owner)

    async def main():
        ws = await open_stream(ws_server, token, subprotocols=[f"bearer.{token}"])
        assert ws.subprotocol == f"bearer.{token}"
        assert await hello(ws) == {
            "type": "hello",
            "userId": owner.pk,
            "lastSeq": 0,
            "heartbeat": 25,
        }
        await ws.send(json.dumps({"action": "ping"}))
        pong = await receive(ws)
        assert pong["type"] == "pong" and pong["timestamp"].endswith("Z")
        await ws.send("not json")
        assert (await receive(ws))["code"] == "INVALID_MESSAGE"
        await ws.send(json.dumps({"action": "dance"}))
        assert await receive(ws) == {
            "type": "error",
            "code": "INVALID_MESSAGE",
            "message": "Unknown action; use subscribe, resume or ping.",
            "details": {"action": "dance"},
        }
        await ws.send(json.dumps({"action": "resume", "after": -1}))
        assert (await receive(ws))["code"] == "INVALID_MESSAGE"
        await ws.close()

        # Another offered protocol is preferred over echoing the token back.
        ws = await open_stream(ws_server, token, subprotocols=["podi.v1", f"bearer.{token}"])
        assert ws.subprotocol == "podi.v1"
        await hello(ws)
        await ws.close()

    run(main())


def test_a_jwt_stream_closes_with_4401_when_the_token_expires(ws_server, owner):
    token = AccessToken.for_user(owner)
    token.set_exp(lifetime=timedelta(seconds=2))

    async def main():
        ws = await open_stream(ws_server, str(token))
        await hello(ws)
        started = time.monotonic()
        await expect_close(ws, 4401)
        assert time.monotonic() - started < 5

    run(main())


def test_a_revoked_key_or_deactivated_user_is_closed_at_the_next_check(
    heartbeat_server, owner, service_key
):
    key, raw = service_key(scopes=["tasks:read"])
    token = jwt(owner)

    async def main():
        keyed = await open_stream(heartbeat_server, raw)
        user = await open_stream(heartbeat_server, token)
        await hello(keyed)
        await hello(user)
        await db(service_key_revoke, key=key)
        await expect_close(keyed, 4401)
        await db(lambda: type(owner).objects.filter(pk=owner.pk).update(is_active=False))
        await expect_close(user, 4401)

    run(main())


def test_a_logged_out_access_token_is_closed_at_the_next_check(heartbeat_server, owner):
    """Logout revokes the access token it was sent with (jti deny list): a socket opened with
    that token is closed with 4401 at the hub's next check; another token of the same user, not
    revoked, keeps its socket."""
    revoked, kept = jwt(owner), jwt(owner)

    async def main():
        gone = await open_stream(heartbeat_server, revoked)
        stays = await open_stream(heartbeat_server, kept)
        await hello(gone)
        await hello(stays)
        jti = AccessToken(revoked)["jti"]
        await db(lambda: access_tokens_revoke(user_id=owner.pk, jti=jti, now=0))
        await expect_close(gone, 4401)
        await stays.send(json.dumps({"action": "ping"}))
        assert (await receive(stays))["type"] in ("pong", "heartbeat")

    run(main())


# --- Whose events -----------------------------------------------------------------------------


def test_a_subscriber_gets_its_own_events_only(ws_server, owner, outsider, service_key):
    key, raw = service_key(scopes=["tasks:write"], name="crm")

    def burst():
        events = []
        for user in (owner, outsider, owner, key.user, outsider, owner):
            events += emit_events(user.pk, 1)
        return events

    async def main():
        mine = await open_stream(ws_server, jwt(owner))
        theirs = await open_stream(ws_server, jwt(outsider))
        keyed = await open_stream(ws_server, raw)
        for ws in (mine, theirs, keyed):
            await hello(ws)
        sent = await db(burst)
        by_user = {uid: [e for e in sent if e["userId"] == uid] for uid in (owner.pk, outsider.pk)}
        got_mine = await receive_events(mine, 3)
        got_theirs = await receive_events(theirs, 2)
        got_keyed = await receive_events(keyed, 1)
        assert [e["id"] for e in got_mine] == [e["id"] for e in by_user[owner.pk]]
        assert [e["seq"] for e in got_mine] == [1, 2, 3]
        assert [e["id"] for e in got_theirs] == [e["id"] for e in by_user[outsider.pk]]
        assert [e["seq"] for e in got_theirs] == [1, 2]
        assert got_keyed[0]["seq"] == 1
        for message in got_mine + got_theirs + got_keyed:
            assert set(message) == EVENT_KEYS
        assert got_mine[0] == {
            "id": by_user[owner.pk][0]["id"],
            "seq": 1,
            "type": "task.progress",
            "payload": {"n": 0},
            "timestamp": by_user[owner.pk][0]["timestamp"],
        }
        for ws in (mine, theirs, keyed):
            await assert_silent(ws, 1.0)
            await ws.close()

    run(main())


def test_subscribe_to_tasks_only_those_the_caller_may_follow(
    ws_server, owner, outsider, staff, service_key
):
    key, raw = service_key(scopes=["tasks:write"], name="crm")
    by_key = make_task(owner, service_key=key)
    other = make_task(owner)
    outsiders = make_task(outsider)

    async def subscribe(ws, task_ids):
        await ws.send(json.dumps({"action": "subscribe", "taskIds": task_ids}))
        return await receive(ws)

    async def main():
        mine = await open_stream(ws_server, jwt(owner))
        nosy = await open_stream(ws_server, jwt(outsider))
        keyed = await open_stream(ws_server, raw)
        boss = await open_stream(ws_server, jwt(staff))
        for ws in (mine, nosy, keyed, boss):
            await hello(ws)

        assert await subscribe(nosy, [by_key.public_id, other.public_id, "../x"]) == {
            "type": "subscribed",
            "taskIds": [],
        }
        assert await receive(nosy) == {
            "type": "error",
            "code": "TASK_NOT_FOUND",
            "message": "No such task of yours.",
            "details": {"taskIds": [by_key.public_id, other.public_id, "../x"]},
        }
        # A service-account key with tasks:read follows any task (docs/architecture.md §5).
        assert await subscribe(keyed, [by_key.public_id, other.public_id, outsiders.public_id]) == {
            "type": "subscribed",
            "taskIds": [by_key.public_id, other.public_id, outsiders.public_id],
        }
        assert await subscribe(boss, [other.public_id]) == {
            "type": "subscribed",
            "taskIds": [other.public_id],
        }
        assert await subscribe(mine, [by_key.public_id, other.public_id]) == {
            "type": "subscribed",
            "taskIds": [by_key.public_id, other.public_id],
        }
        await nosy.send(json.dumps({"action": "subscribe", "taskIds": "tsk_1"}))
        assert (await receive(nosy))["code"] == "INVALID_MESSAGE"

        def raise_events():
            return (
                emit_events(owner.pk, 1, task_id=by_key.public_id)
                + emit_events(owner.pk, 1, task_id=other.public_id)
                + emit_events(owner.pk, 1)
                + emit_events(outsider.pk, 1, task_id=outsiders.public_id)
            )

        sent = await db(raise_events)
        got = await receive_events(mine, 3)
        assert [e["id"] for e in got] == [e["id"] for e in sent[:3]]
        keyed_got = await receive_events(keyed, 3)
        assert next(e for e in keyed_got if e["id"] == sent[0]["id"]) == {
            "id": sent[0]["id"],
            "seq": 1,
            "type": "task.progress",
            "payload": {"n": 0, "taskId": by_key.public_id},
            "timestamp": sent[0]["timestamp"],
            "userId": owner.pk,
        }
        assert {e["id"] for e in keyed_got} == {sent[0]["id"], sent[1]["id"], sent[3]["id"]}
        boss_got = await receive_events(boss, 1)
        assert [e["id"] for e in boss_got] == [sent[1]["id"]]
        nosy_got = await receive_events(nosy, 1)
        assert [e["id"] for e in nosy_got] == [sent[3]["id"]]
        for ws in (mine, nosy, keyed, boss):
            await assert_silent(ws, 1.0)
            await ws.close()

    run(main())


def test_subscribe_all_is_staff_only(ws_server, owner, outsider, staff):
    async def main():
        nosy = await open_stream(ws_server, jwt(outsider))
        boss = await open_stream(ws_server, jwt(staff))
        await hello(nosy)
        await hello(boss)
        await nosy.send(json.dumps({"action": "subscribe", "all": True}))
        assert await receive(nosy) == {
            "type": "error",
            "code": "FORBIDDEN",
            "message": "Only staff may subscribe to all events.",
            "details": {},
        }
        await boss.send(json.dumps({"action": "subscribe", "all": True}))
        assert await receive(boss) == {"type": "subscribed", "all": True}
        sent = await db(
            lambda: (
                emit_events(owner.pk, 2) + emit_events(outsider.pk, 1) + emit_events(staff.pk, 1)
            )
        )
        got = await receive_events(boss, 4)
        # Each user's events arrive in that user's order; across users no order is promised
        # (the staff's own event may come through its user group first).
        assert sorted((e["id"], e.get("userId")) for e in got) == sorted(
            [
                (sent[0]["id"], owner.pk),
                (sent[1]["id"], owner.pk),
                (sent[2]["id"], outsider.pk),
                (sent[3]["id"], None),  # the caller's own events carry no userId
            ]
        )
        owners = [e["id"] for e in got if e.get("userId") == owner.pk]
        assert owners == [sent[0]["id"], sent[1]["id"]]
        nosy_got = await receive_events(nosy, 1)
        assert [e["id"] for e in nosy_got] == [sent[2]["id"]]
        await assert_silent(nosy, 1.0)
        await assert_silent(boss, 0.5)

    run(main())


# --- Resume, gaps ------------------------------------------------------------------------------


async def collect_until(
    ws, last_seq: int, timeout: float = 30, *, resumed: bool = False
) -> tuple[list[int], list[dict]]:
    """Event seqs until ``last_seq`` (and, if asked, the "resumed" marker) arrived, and the
    control messages seen meanwhile."""
    seqs, controls = [], []
    deadline = time.monotonic() + timeout
    while last_seq not in seqs or (resumed and not controls):
        message = await receive(ws, timeout=deadline - time.monotonic())
        if message["type"] in CONTROL_TYPES:
            controls.append(message)
        else:
            assert set(message) == EVENT_KEYS, message
            seqs.append(message["seq"])
    return seqs, controls


def test_resume_after_a_disconnect_replays_then_goes_live_without_gap_or_duplicate(
    ws_server, owner
):
    token = jwt(owner)

    async def main():
        first = await open_stream(ws_server, token)
        assert (await hello(first))["lastSeq"] == 0
        await db(emit_events, owner.pk, 3)
        assert [e["seq"] for e in await receive_events(first, 3)] == [1, 2, 3]
        await first.close()

        await db(emit_events, owner.pk, 5)  # while disconnected: seqs 4..8

        # Resume in the URL: the replay comes before anything live, even while events commit.
        racing = asyncio.create_task(db(emit_events, owner.pk, 12))  # seqs 9..20
        second = await connect(f"{ws_server.url(token)}&after=3", open_timeout=20)
        assert (await hello(second))["lastSeq"] >= 8
        seqs, controls = await collect_until(second, 20, resumed=True)
        await racing
        assert seqs == list(range(4, 21))
        assert [c["type"] for c in controls] == ["resumed"]
        assert controls[0]["after"] == 3
        await assert_silent(second, 1.0)
        await second.close()

        # Resume by message right after hello: the same, exactly.
        await db(emit_events, owner.pk, 2)  # 21, 22 while nobody listens
        third = await open_stream(ws_server, token)
        assert (await hello(third))["lastSeq"] == 22
        await third.send(json.dumps({"action": "resume", "after": 20}))
        assert [e["seq"] for e in await receive_events(third, 2)] == [21, 22]
        assert await receive(third) == {"type": "resumed", "after": 20, "lastSeq": 22, "count": 2}
        await db(emit_events, owner.pk, 1)
        assert [e["seq"] for e in await receive_events(third, 1)] == [23]

        # A resume racing live events: everything this socket had not sent yet (1..20 here,
        # 21..23 it already sent), each exactly once.
        racing = asyncio.create_task(db(emit_events, owner.pk, 10))  # 24..33
        await asyncio.sleep(0.05)
        await third.send(json.dumps({"action": "resume", "after": 0}))
        seqs, controls = await collect_until(third, 33, resumed=True)
        await racing
        assert sorted(seqs) == list(range(1, 21)) + list(range(24, 34))
        assert len(seqs) == len(set(seqs))
        replayed = [s for s in seqs if s <= 20]
        assert replayed == list(range(1, 21))  # the replay itself is in order
        assert [c["type"] for c in controls] == ["resumed"]
        await assert_silent(third, 1.0)

        # A resume from the future is clamped to now (nothing is skipped later).
        await third.send(json.dumps({"action": "resume", "after": 999}))
        assert await receive(third) == {"type": "resumed", "after": 33, "lastSeq": 33, "count": 0}
        await db(emit_events, owner.pk, 1)
        assert [e["seq"] for e in await receive_events(third, 1)] == [34]
        # A malformed resume in the URL is reported, and the stream goes on live.
        fourth = await connect(f"{ws_server.url(token)}&after=x", open_timeout=20)
        await hello(fourth)
        assert (await receive(fourth))["code"] == "INVALID_MESSAGE"

    run(main())


def test_a_resume_too_far_back_is_refused_and_the_stream_stays_live(ws_server, owner):
    Event.objects.bulk_create(
        Event(public_id=new_id("evt"), user=owner, seq=n, type="task.progress", payload={})
        for n in range(1, MAX_REPLAY + 3)
    )
    EventCursor.objects.create(user=owner, last_seq=MAX_REPLAY + 2)

    async def main():
        ws = await open_stream(ws_server, jwt(owner))
        await hello(ws)
        await ws.send(json.dumps({"action": "resume", "after": 1}))
        error = await receive(ws)
        assert error["code"] == "RESUME_TOO_FAR"
        assert error["details"] == {"minAfter": 2, "lastSeq": MAX_REPLAY + 2}
        await db(emit_events, owner.pk, 1)
        assert [e["seq"] for e in await receive_events(ws, 1)] == [MAX_REPLAY + 3]

    run(main())


def test_a_lost_publication_is_filled_from_the_database_in_order(ws_server, owner):
    async def main():
        ws = await open_stream(ws_server, jwt(owner))
        await hello(ws)
        lost = await db(record_without_publishing, owner.pk, 0)
        sent = await db(emit_events, owner.pk, 2)
        got = await receive_events(ws, 3)
        assert [e["seq"] for e in got] == [1, 2, 3]
        assert [e["id"] for e in got] == [lost["id"], sent[0]["id"], sent[1]["id"]]
        assert got[0]["payload"] == {"n": 0, "lost": True}
        await assert_silent(ws, 1.0)

    run(main())


def test_heartbeats_and_a_lost_last_event_arrives_with_the_next_heartbeat(heartbeat_server, owner):
    async def main():
        ws = await open_stream(heartbeat_server, jwt(owner))
        assert (await hello(ws))["heartbeat"] == 1
        beat = await receive(ws, timeout=3, skip=())
        assert beat["type"] == "heartbeat" and beat["timestamp"].endswith("Z")
        lost = await db(record_without_publishing, owner.pk, 0)
        started = time.monotonic()
        got = await receive_events(ws, 1, timeout=5)
        assert [e["id"] for e in got] == [lost["id"]]
        assert time.monotonic() - started < 3

    run(main())


def test_events_from_another_process_reach_the_socket(request, ws_server, owner):
    """Production: a worker process's event reaches the web process through Redis at once.
    Embedded: another process has no channel to us, but the event is in the database and the
    socket reads it at the next heartbeat (every second here)."""
    server = ws_server if PRODUCTION else request.getfixturevalue("heartbeat_server")
    script = (
        "import time\n"
        "from django.db import transaction\n"
        "from podi.realtime.events import emit\n"
        f"for n in range(3):\n"
        f"    with transaction.atomic():\n"
        f"        emit(user_id={owner.pk}, type='task.status', payload={{'n': n}})\n"
        "    print(time.time(), flush=True)\n"  # committed at
        "time.sleep(1)\n"  # let the publisher thread flush before exiting
    )

    async def main():
        ws = await open_stream(server, jwt(owner))
        await hello(ws)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            script,
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        got = await receive_events(ws, 3, timeout=60)
        received_at = time.time()
        stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        assert [e["seq"] for e in got] == [1, 2, 3]
        assert [e["payload"] for e in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
        committed_at = float(stdout.decode().split()[-1])
        if PRODUCTION:
            # Far below the 25 s heartbeat: delivered live through Redis.
            assert received_at - committed_at < 5
        else:
            assert received_at - committed_at < 4

    run(main())


# --- Load, slow clients ------------------------------------------------------------------------


def test_200_concurrent_subscribers_all_receive_a_burst_in_order(ws_server, owner, teammate):
    tokens = [jwt(owner), jwt(teammate)]

    async def main():
        sockets = await asyncio.gather(
            *(open_stream(ws_server, tokens[i % 2], max_queue=None) for i in range(200))
        )
        await asyncio.gather(*(hello(ws) for ws in sockets))

        def burst():
            for _ in range(25):
                emit_events(owner.pk, 1)
                emit_events(teammate.pk, 1)

        started = time.monotonic()
        await db(burst)
        results = await asyncio.gather(*(receive_events(ws, 25, timeout=60) for ws in sockets))
        elapsed = time.monotonic() - started
        for got in results:
            assert [e["seq"] for e in got] == list(range(1, 26))
            assert [e["payload"]["n"] for e in got] == [0] * 25
        assert elapsed < 60
        await asyncio.gather(*(ws.close() for ws in sockets))

    run(main())


def test_a_stalled_or_dead_client_does_not_delay_the_others(ws_server, owner, teammate):
    token = jwt(owner)
    stalled = [raw_handshake(ws_server, token) for _ in range(3)]
    dead = raw_handshake(ws_server, token)
    dead.close()  # gone without a close frame

    async def main():
        healthy = await open_stream(ws_server, token, max_queue=None)
        other = await open_stream(ws_server, jwt(teammate))
        await hello(healthy)
        await hello(other)
        # ~6 MB for each stalled socket: far beyond what its TCP buffers hold.
        started = time.monotonic()
        await db(emit_events, owner.pk, 200, size=32_000)
        got = await receive_events(healthy, 200, timeout=60)
        healthy_elapsed = time.monotonic() - started
        assert [e["seq"] for e in got] == list(range(1, 201))
        # Another user's events are not stuck behind the stalled sockets either.
        started = time.monotonic()
        await db(emit_events, teammate.pk, 1)
        assert [e["seq"] for e in await receive_events(other, 1, timeout=10)] == [1]
        assert time.monotonic() - started < 3
        assert healthy_elapsed < 30

    try:
        run(main())
    finally:
        for sock in stalled:
            sock.close()
