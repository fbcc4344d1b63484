"""Migration operations shared by the apps' migrations."""

from __future__ import annotations

from django.db import migrations


def drop_pattern_indexes(table: str, column: str) -> migrations.RunPython:
    """Drop the ``varchar_pattern_ops`` copy of ``table.column``'s index that Django adds on
    PostgreSQL for a unique or indexed ``CharField`` (for ``LIKE 'x%'``). PODI never looks a
    public id up by prefix (the admin's search is ``icontains``, which no btree serves), so the
    copy only costs every insert. Nothing to do elsewhere; the reverse does not recreate it."""

    def drop(apps, schema_editor):
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = %s AND indexdef LIKE %s",
                [table, f"%({column} varchar_pattern_ops)%"],
            )
            names = [row[0] for row in cursor.fetchall()]
        for name in names:
            schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")

    return migrations.RunPython(drop, migrations.RunPython.noop, elidable=True)
