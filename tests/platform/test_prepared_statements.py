"""Prepared statements on PostgreSQL (docs/adr/0025-prepared-statements.md): parameters are bound
by the server, and a statement run ``DATABASE_PREPARE_THRESHOLD`` (5) times on one connection is
prepared there, so the money statements and the success statement are parsed and planned once per
connection, not on every call. A statement whose plan went stale (a column's type changed under
it) is prepared afresh (``podi/prepared.py``), never left failing, and an integer beyond its
column's range is refused, never wrapped to the column's width."""

from __future__ import annotations

import logging

import psycopg
import pytest
from django.conf import settings
from django.db import DataError, NotSupportedError, connection, transaction

from integrations.models import Ability
from wallet.models import Account
from wallet.services import hold_confirm, hold_freeze, wallet_grant

pytestmark = pytest.mark.django_db(transaction=True)


def prepared(fragment: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall() if fragment in row[0]]


def test_the_money_statements_are_prepared_after_the_threshold(owner):
    assert settings.DATABASE_PREPARE_THRESHOLD == 5
    assert connection.settings_dict["OPTIONS"]["server_side_binding"] is True
    wallet_grant(user=owner, points=100)
    connection.ensure_connection()
    for index in range(settings.DATABASE_PREPARE_THRESHOLD):
        hold, _ = hold_freeze(user=owner, task_id=f"warm-{index}", points=1, action="txt2img")
        hold_confirm(hold=hold)
    assert not prepared('INSERT INTO "wallet_hold"')  # not yet: run five times, unprepared
    hold, _ = hold_freeze(user=owner, task_id="sixth", points=1, action="txt2img")
    hold_confirm(hold=hold)
    freezes = prepared('INSERT INTO "wallet_hold"')
    assert len(freezes) == 1 and "$1" in freezes[0]  # bound by the server, prepared once
    assert prepared('UPDATE "wallet_hold"')  # the confirm too
    # From now on the connection runs it without parsing or planning it again.
    hold, _ = hold_freeze(user=owner, task_id="seventh", points=1, action="txt2img")
    hold_confirm(hold=hold)
    assert prepared('INSERT INTO "wallet_hold"') == freezes
    assert Account.objects.get(user=owner).balance == 93


def test_a_stale_plan_is_prepared_afresh_outside_a_transaction_and_fails_once_inside(caplog):
    """A migration changes a column's type while a process runs (another connection): the
    process's prepared statement over it must not keep failing."""
    select = "SELECT * FROM podi_prepare_probe WHERE v > %s"

    def warm(cursor) -> None:
        for _ in range(settings.DATABASE_PREPARE_THRESHOLD + 1):
            cursor.execute(select, [0])
        assert prepared("podi_prepare_probe")

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE podi_prepare_probe (v integer)")
        cursor.execute("INSERT INTO podi_prepare_probe VALUES (1)")
        try:
            warm(cursor)
            with _other() as other:
                other.execute("ALTER TABLE podi_prepare_probe ALTER COLUMN v TYPE bigint")
            # Outside a transaction: answered at once, from a statement prepared afresh.
            with caplog.at_level(logging.WARNING, logger="podi.db"):
                cursor.execute(select, [0])
            assert cursor.fetchall() == [(1,)]
            assert "plan went stale" in caplog.text
            assert not prepared("podi_prepare_probe")  # DEALLOCATE ALL: none kept
            # Inside a transaction the error reaches the caller; its rollback heals the rest.
            warm(cursor)
            with _other() as other:
                other.execute("ALTER TABLE podi_prepare_probe ALTER COLUMN v TYPE integer")
            with pytest.raises(NotSupportedError), transaction.atomic():
                cursor.execute(select, [0])
            cursor.execute(select, [0])
            assert cursor.fetchall() == [(1,)]
        finally:
            cursor.execute("DROP TABLE podi_prepare_probe")


def _other() -> psycopg.Connection:
    """A second connection: the schema changes under the first one's prepared statement."""
    params = connection.get_connection_params()
    keep = {k: params[k] for k in ("dbname", "user", "host", "port", "password") if k in params}
    return psycopg.connect(autocommit=True, **keep)


def test_an_integer_out_of_its_columns_range_is_refused_never_wrapped(staff, client_for):
    """Bound by the server, Django's ``Int4`` of 2**40 would arrive as 0 (the width wraps): it is
    refused as PostgreSQL refuses it with client-side binding, and the API answers 400."""
    for points in (2**40, 2**31, -(2**31) - 1):
        with pytest.raises(DataError, match="out of range"):
            Ability.objects.create(code=f"big-{abs(points)}", display_name="x", points=points)
    with pytest.raises(DataError, match="out of range"):
        Ability.objects.bulk_create([Ability(code="bulk", display_name="x", points=2**32 + 5)])
    assert not Ability.objects.exists()
    assert (
        Ability.objects.create(code="edge", display_name="x", points=2**31 - 1).points == 2**31 - 1
    )

    response = client_for(staff).post(
        "/api/admin/abilities", json={"code": "price", "displayName": "x", "points": 4064440463}
    )
    assert (response.status_code, response.json()["code"]) == (400, "VALIDATION_ERROR")
    assert not Ability.objects.filter(code="price").exists()
