"""Two guards for server-side binding on PostgreSQL (docs/adr/0025-prepared-statements.md).

**An integer out of its column's range is refused, never wrapped.** Django hands an integer
field's value to psycopg as ``Int2``/``Int4``/``Int8``. Bound by the server, such a value is sent
in that binary width, so 2**40 for an ``integer`` column arrived as 0 and -230526833 as a price
(found by the API fuzz test), where client-side binding let PostgreSQL refuse it ("integer out
of range"). The wrapper raises the ``DataError`` PostgreSQL would have raised (the API answers it
400 ``VALIDATION_ERROR``), before anything is sent.

**A prepared statement whose plan went stale is forgotten, not kept failing.**

PostgreSQL refuses to run a prepared statement whose result columns changed under it (a column's
type changed by a migration while this process ran): ``cached plan must not change result type``
(SQLSTATE 0A000). psycopg forgets its prepared statements on a ``ROLLBACK``, so a failed
transaction heals itself, but a statement run outside a transaction (our one-statement money and
success paths) would fail the same way on that connection until it closed. This execute wrapper,
on every PostgreSQL connection, answers that error with ``DEALLOCATE ALL`` (psycopg forgets its
own statements too) and, outside a transaction, runs the statement once more; inside one it
re-raises, and the transaction's rollback does the rest.
"""

from __future__ import annotations

import logging

from django.db import DataError, NotSupportedError
from django.db.backends.signals import connection_created
from psycopg.types.numeric import Int2, Int4, Int8

logger = logging.getLogger("podi.db")

STALE_PLAN = "0A000"  # feature_not_supported: "cached plan must not change result type"
_BITS = {Int2: 16, Int4: 32, Int8: 64}


def _check_integers(params) -> None:
    for value in params:
        bits = _BITS.get(type(value))
        if bits is not None and not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise DataError(f"{int(value)} is out of range for a {bits}-bit integer column")


def _guard(execute, sql, params, many, context):
    if params and (not many or isinstance(params, list | tuple)):  # never consume an iterator
        for row in params if many else (params,):
            if isinstance(row, list | tuple):
                _check_integers(row)
    try:
        return execute(sql, params, many, context)
    except NotSupportedError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != STALE_PLAN:
            raise
        wrapper = context["connection"]
        logger.warning("a prepared statement's plan went stale (%s); preparing afresh", exc)
        in_transaction = wrapper.in_atomic_block or not wrapper.get_autocommit()
        if not in_transaction:
            with wrapper.connection.cursor() as raw:
                raw.execute("DEALLOCATE ALL")
            return execute(sql, params, many, context)
        raise


def _on_connection(sender, connection, **kwargs):  # noqa: ARG001
    if connection.vendor == "postgresql" and _guard not in connection.execute_wrappers:
        connection.execute_wrappers.append(_guard)


def install() -> None:
    connection_created.connect(_on_connection, dispatch_uid="podi.prepared")
