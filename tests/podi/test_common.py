"""The shared service helpers in ``podi.common``."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from integrations.models import Executor
from podi.common import RowReader, model_update
from podi.errors import AppError

pytestmark = pytest.mark.django_db

FIELDS = {"name", "base_url", "max_concurrency"}


@pytest.fixture
def executor():
    return Executor.objects.create(name="gpu-1", kind="comfyui", base_url="http://10.0.0.5:8188")


def test_model_update_saves_only_what_changed(executor):
    before = executor.updated_at
    with CaptureQueriesContext(connection) as queries:
        updated, changed = model_update(
            instance=executor, fields=FIELDS, data={"name": "gpu-2", "base_url": executor.base_url}
        )
    assert (updated, changed) == (executor, True)
    (update,) = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert '"name"' in update and '"updated_at"' in update
    assert '"base_url"' not in update and '"max_concurrency"' not in update
    row = Executor.objects.get(pk=executor.pk)
    assert (row.name, row.base_url) == ("gpu-2", "http://10.0.0.5:8188")
    assert row.updated_at > before


def test_model_update_without_a_change_touches_nothing(executor, django_assert_num_queries):
    with django_assert_num_queries(0):
        updated, changed = model_update(
            instance=executor, fields=FIELDS, data={"name": "gpu-1", "max_concurrency": 1}
        )
    assert (updated, changed) == (executor, False)


def test_model_update_refuses_fields_not_offered(executor):
    with pytest.raises(AppError) as caught:
        model_update(instance=executor, fields=FIELDS, data={"name": "x", "health_status": "ok"})
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.details == {"fields": {"health_status": ["Cannot be changed here."]}}
    assert Executor.objects.get(pk=executor.pk).name == "gpu-1"


def test_model_update_validates_the_row_before_saving(executor):
    with pytest.raises(AppError) as caught:
        model_update(instance=executor, fields=FIELDS, data={"max_concurrency": 0})
    assert caught.value.code == "VALIDATION_ERROR"
    assert "__all__" in caught.value.details["fields"]
    assert Executor.objects.get(pk=executor.pk).max_concurrency == 1


def _fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_row_reader_reads_what_the_orm_reads_in_one_statement(executor, django_user_model):
    user = django_user_model.objects.create_user(username="reader", password="x" * 12)
    users = RowReader(django_user_model, "id")
    names = RowReader(Executor, "name")
    with CaptureQueriesContext(connection) as queries:
        read = users.get(user.pk)
        by_name = names.get(executor.name)
    assert len(queries) == 2
    # Every column, converted as the ORM converts it (aware datetimes on SQLite too).
    assert _fields(read) == _fields(django_user_model.objects.get(pk=user.pk))
    assert read.date_joined.tzinfo is not None
    assert not read._state.adding  # a loaded row: save() updates it
    assert _fields(by_name) == _fields(Executor.objects.get(pk=executor.pk))
    assert users.get(str(user.pk)).pk == user.pk  # the token's claim may be text


def test_row_reader_answers_none_for_a_missing_row_or_a_value_the_column_cannot_hold(
    django_user_model,
):
    users = RowReader(django_user_model, "id")
    assert users.get(987654) is None
    with CaptureQueriesContext(connection) as queries:
        assert users.get("not a number") is None
    assert len(queries) == 0
    assert users.get(None) is None
    assert RowReader(Executor, "name").get("no such executor") is None


def test_row_reader_with_constant_filters_and_a_row_lock(executor):
    """``where`` adds constant filters; ``lock`` reads FOR UPDATE (SKIP LOCKED) on PostgreSQL
    and, as the ORM's own locking read, only inside a transaction."""
    enabled = RowReader(Executor, "pk", where={"enabled": True, "kind": "comfyui"}, lock="update")
    skipping = RowReader(Executor, "name", where={"enabled": True}, lock="skip_locked")
    with transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            assert enabled.get(executor.pk).name == "gpu-1"
            assert skipping.get("gpu-1").pk == executor.pk
        if connection.vendor == "postgresql":
            assert "FOR UPDATE" in queries[0]["sql"]
            assert "SKIP LOCKED" in queries[1]["sql"] and "SKIP LOCKED" not in queries[0]["sql"]
    Executor.objects.filter(pk=executor.pk).update(enabled=False)
    with transaction.atomic():
        assert enabled.get(executor.pk) is None  # the constant filter holds, value by value
        assert skipping.get("gpu-1") is None
    with pytest.raises(ValueError):
        RowReader(Executor, "pk", lock="share")
