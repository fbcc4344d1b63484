"""A socket's stream survives a database failure during a catch-up (PostgreSQL configuration).

The bench saw every later event of a socket lost after one failed catch-up read during an
overload, while heartbeats went on. Here the event table is out of reach (renamed) while the
socket has events to catch up on: its reads fail for a few seconds. The stream must back off,
then deliver everything in order, without closing."""

from __future__ import annotations

import asyncio

import pytest
from django.db import connection, transaction

from podi.realtime.models import Event
from tests.realtime.conftest import (
    db,
    emit_events,
    jwt,
    open_stream,
    receive,
    receive_events,
    start_daphne_process,
    stop_process,
)
from tests.realtime.test_stream import record_without_publishing

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
]

TABLE = Event._meta.db_table


def record_two_and_hide_the_table(user_id: int) -> list[dict]:
    """Two events persisted but never published (a crashed publisher), committed together with
    the event table's rename: the socket's next catch-up finds them missing and fails."""
    with transaction.atomic():
        lost = [record_without_publishing(user_id, n) for n in (0, 1)]
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{TABLE}_hidden"')
    return lost


def show_the_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{TABLE}_hidden" RENAME TO "{TABLE}"')


def test_a_failed_catch_up_is_retried_and_the_stream_goes_on(owner, tmp_path):
    log = tmp_path / "web.log"
    # Heartbeats every second: each one makes the socket check the database for missed events.
    server = start_daphne_process(log, NOTIFY_HEARTBEAT_INTERVAL="1")
    hidden = False
    try:

        async def main():
            nonlocal hidden
            ws = await open_stream(server, jwt(owner))
            assert (await receive(ws))["type"] == "hello"
            first = await db(emit_events, owner.pk, 1)
            assert [e["id"] for e in await receive_events(ws, 1)] == [first[0]["id"]]
            lost = await db(record_two_and_hide_the_table, owner.pk)
            hidden = True
            await asyncio.sleep(3.5)  # a few heartbeats: catch-ups that fail
            await db(show_the_table)
            hidden = False
            got = await receive_events(ws, 2, timeout=30)
            assert [e["id"] for e in got] == [e["id"] for e in lost]
            more = await db(emit_events, owner.pk, 2)
            got = await receive_events(ws, 2, timeout=15)
            assert [e["id"] for e in got] == [e["id"] for e in more]
            await ws.close()

        asyncio.run(main())
    finally:
        if hidden:
            show_the_table()
        stop_process(server.process)
    assert "notify stream failed" in log.read_text()  # the failure did happen, and was survived
