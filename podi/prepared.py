"""A prepared statement whose plan went stale is forgotten, not kept failing
(docs/adr/0025-prepared-statements.md).

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

from django.db import NotSupportedError
from django.db.backends.signals import connection_created

logger = logging.getLogger("podi.db")

STALE_PLAN = "0A000"  # feature_not_supported: "cached plan must not change result type"


def _forget_stale_plans(execute, sql, params, many, context):
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
    if connection.vendor == "postgresql" and _forget_stale_plans not in connection.execute_wrappers:
        connection.execute_wrappers.append(_forget_stale_plans)


def install() -> None:
    connection_created.connect(_on_connection, dispatch_uid="podi.prepared")
