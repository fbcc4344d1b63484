"""Helpers every app's services and selectors share: update a row from a dict of changes, delete
one that others may still reference, check a unique name, clean required text, fetch by id or
raise the app's 404. Public on purpose (as the Django Styleguide's ``common/services.py``);
nothing domain-specific lives here.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connections, models, transaction
from django.db.models import ProtectedError, QuerySet, RestrictedError
from django.db.models.sql.subqueries import UpdateQuery

from podi import error_codes as codes
from podi.errors import AppError, ErrorCode, validation_error

ModelT = TypeVar("ModelT", bound=models.Model)


def model_update(
    *, instance: ModelT, fields: list[str] | set[str], data: dict[str, Any]
) -> tuple[ModelT, bool]:
    """Set ``data`` on ``instance`` and save only what changed (plus ``auto_now`` fields).

    ``fields`` are the names a caller may change; any other key in ``data`` is refused with a
    400 naming it. The row is validated with ``full_clean`` before it is saved; a Django
    ``ValidationError`` becomes the usual 400 ``VALIDATION_ERROR``. Returns the instance and
    whether anything changed (nothing saved, no query, when nothing did)."""
    unknown = set(data) - set(fields)
    if unknown:
        raise validation_error({name: ["Cannot be changed here."] for name in sorted(unknown)})
    changed: list[str] = []
    for name, value in data.items():
        if getattr(instance, name) != value:
            setattr(instance, name, value)
            changed.append(name)
    if not changed:
        return instance, False
    try:
        instance.full_clean()
    except DjangoValidationError as exc:
        raise validation_error(exc.message_dict) from None
    auto_now = [
        field.name
        for field in instance._meta.concrete_fields
        if getattr(field, "auto_now", False) and field.name not in changed
    ]
    instance.save(update_fields=[*changed, *auto_now])
    return instance, True


def model_delete(*, instance: models.Model, what: str) -> None:
    """Delete ``instance``; 409 ``RESOURCE_IN_USE`` naming the rows that still refer to it
    (``PROTECT`` / ``RESTRICT`` foreign keys) instead of an error page."""
    try:
        with transaction.atomic():
            instance.delete()
    except (ProtectedError, RestrictedError) as exc:
        blocking = (
            exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
        )
        refs = sorted({f"{obj._meta.verbose_name} #{obj.pk}" for obj in blocking})
        raise AppError(
            codes.RESOURCE_IN_USE,
            f"This {what} is still referenced by {', '.join(refs[:5])}"
            f"{' and more' if len(refs) > 5 else ''}; remove or re-point those first.",
            details={"references": refs[:50]},
        ) from None


def check_unique(
    *, model: type[models.Model], field: str, value: Any, exclude_pk: Any = None
) -> None:
    """400 on ``field`` when another row already has ``value`` (the friendly check before the
    database constraint, which still decides under concurrency)."""
    query = model._default_manager.filter(**{field: value})
    if exclude_pk is not None:
        query = query.exclude(pk=exclude_pk)
    if query.exists():
        raise validation_error({field: [f"{value!r} is already taken."]})


def required_text(value: Any, *, field: str, max_length: int) -> str:
    """``value`` as stripped text; 400 on ``field`` when it is empty or too long."""
    text = str(value or "").strip()
    if not text:
        raise validation_error({field: ["Required."]})
    if len(text) > max_length:
        raise validation_error({field: [f"At most {max_length} characters."]})
    return text


def get_or_error(queryset: QuerySet[ModelT], pk: Any, error: ErrorCode) -> ModelT:
    """The row of ``queryset`` with integer primary key ``pk``, else ``AppError(error)`` (404)."""
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        raise AppError(error) from None
    found = queryset.filter(pk=pk).first()
    if found is None:
        raise AppError(error)
    return found


def update_statement(queryset: QuerySet, **values: Any) -> tuple[str, tuple]:
    """The statement ``queryset.update(**values)`` would run, compiled by the ORM, for a caller
    to keep and run again with :func:`update_run` (docs/adr/0028-statements-compiled-once.md).

    Compiling a guarded update with a subquery costs more CPU than running it; a hot path whose
    statement depends on a few values only (an executor's id) compiles it once per value."""
    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(values)
    sql, params = query.get_compiler(queryset.db).as_sql()
    return sql, tuple(params)


def update_run(statement: tuple[str, tuple], *, using: str = "default") -> int:
    """Run a statement from :func:`update_statement`; the number of rows it changed."""
    sql, params = statement
    with transaction.mark_for_rollback_on_error(using), connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


class RowReader:
    """One row of ``model`` by the value of one column, as ``model.objects.filter(column=value)``
    would read it, the ORM's SQL compiled once per process (ADR 0028). For the reads every
    request makes (the caller's user): building and compiling the queryset cost several times
    more CPU than the indexed read itself.

    ``where``: constant filters added to the read (``{"status": "queued"}``). ``lock``: read
    the row ``FOR UPDATE`` (``"update"``) or ``FOR UPDATE SKIP LOCKED`` (``"skip_locked"``),
    of the model's own table; such a read must run inside a transaction, as the ORM's would.

    ``get(value)`` returns the instance or None; a value the column cannot hold is None too."""

    _SAMPLES = (-987_654_321, "~podi-row-reader-sample~")

    def __init__(
        self,
        model: type[models.Model],
        column: str,
        *,
        using: str = "default",
        where: dict[str, Any] | None = None,
        lock: str = "",
    ):
        if lock not in ("", "update", "skip_locked"):
            raise ValueError(f"lock: {lock!r}")
        self.model, self.column, self.using = model, column, using
        self.where, self.lock = dict(where or {}), lock
        self._compiled: tuple | None = None

    def _compile(self) -> tuple:
        meta = self.model._meta
        field = meta.pk if self.column == "pk" else meta.get_field(self.column)
        connection = connections[self.using]
        # A value no caller gives, to find the column's parameter among the constants'.
        sample = next(
            value
            for value in self._SAMPLES
            if _holds(field, value) and value not in self.where.values()
        )
        queryset = self.model._default_manager.filter(**{self.column: sample}, **self.where)
        if self.lock:
            queryset = queryset.select_for_update(
                of=("self",), skip_locked=self.lock == "skip_locked"
            )
        compiler = queryset.query.get_compiler(self.using)
        sql, params = compiler.as_sql()
        prepared = field.get_db_prep_value(sample, connection, prepared=False)
        at = [index for index, param in enumerate(params) if param == prepared]
        if len(at) != 1:  # pragma: no cover - a model whose default manager adds filters
            raise ValueError(f"{self.model.__name__}.{self.column}: not a one-value read")
        columns = [column for column, _, _ in compiler.select]
        converters = compiler.get_converters(columns)
        names = [column.target.attname for column in columns]
        return field, sql, list(params), at[0], names, compiler, converters

    def get(self, value: Any) -> models.Model | None:
        if self._compiled is None:
            self._compiled = self._compile()
        field, sql, params, at, names, compiler, converters = self._compiled
        connection = connections[self.using]
        try:
            value = field.get_db_prep_value(value, connection, prepared=False)
        except (TypeError, ValueError, DjangoValidationError):
            return None
        if len(params) > 1:
            params = params.copy()
            params[at] = value
        else:
            params = (value,)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        if converters:
            row = next(iter(compiler.apply_converters([row], converters)))
        return self.model.from_db(self.using, names, row)


def _holds(field: models.Field, value: Any) -> bool:
    try:
        field.run_validators(field.to_python(value))
    except DjangoValidationError:
        return False
    return isinstance(field.to_python(value), type(value))
