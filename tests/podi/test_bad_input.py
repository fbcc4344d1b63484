"""Bad input answers a 4xx with a stable code, never a 500: size, depth, NUL, ranges."""

import pytest
from django.db import connection

from integrations.models import VendorApiKey
from tasks.models import Task

pytestmark = pytest.mark.django_db


def assert_error(response, status, code):
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert body["code"] == code, body
    return body


def test_a_body_over_the_limit_is_413(owner_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"action": "x", "params": {"p": "' + "x" * 2000 + '"}}'
    for path in ("/api/tasks/v1/submit", "/api/media/v1/upload-key"):
        refused = assert_error(owner_client.generic("POST", path, body), 413, "PAYLOAD_TOO_LARGE")
        assert refused["details"] == {"maxBytes": 1000}
    assert Task.objects.count() == 0


def test_a_form_over_the_limit_is_413(owner_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = owner_client.generic(
        "POST",
        "/api/tasks/v1/submit",
        "action=" + "x" * 2000,
        content_type="application/x-www-form-urlencoded",
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_json_is_400(owner_client, depth):
    body = '{"action": "x", "params": {"p": ' + "[" * depth + "]" * depth + "}}"
    response = owner_client.generic("POST", "/api/tasks/v1/submit", body)
    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert "Nested deeper than 64 levels" in body["message"]


def test_nul_in_a_json_string_or_key_is_400(owner_client):
    for payload in (
        {"action": "a\x00b"},
        {"action": "x", "params": {"p\x00": 1}},
        {"action": "x", "params": {"p": ["ok", "n\x00l"]}},
    ):
        response = owner_client.post("/api/tasks/v1/submit", payload)
        assert_error(response, 400, "VALIDATION_ERROR")
    assert Task.objects.count() == 0


def test_nul_in_the_query_or_path_is_400(owner_client, staff_client):
    assert_error(owner_client.get("/api/tasks/v1?action=a%00b"), 400, "VALIDATION_ERROR")
    # In the path: the view's own code, or a 400 from the database's refusal (PostgreSQL) or
    # nothing found (SQLite); never a 500.
    detail = owner_client.get("/api/tasks/v1/tsk_a%00b")
    assert (detail.status_code, detail.json()["code"]) in {
        (400, "VALIDATION_ERROR"),
        (404, "TASK_NOT_FOUND"),
    }
    assert_error(staff_client.get("/api/admin/executors?search=%00"), 400, "VALIDATION_ERROR")
    assert_error(staff_client.get("/admin/tasks/task/?q=%00"), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("page", ["1000001", "99999999999999999999", "0", "-1"])
def test_page_numbers_out_of_range_are_400(owner_client, page):
    body = assert_error(owner_client.get(f"/api/tasks/v1?page={page}"), 400, "VALIDATION_ERROR")
    assert list(body["details"]["fields"]) == ["page"]


@pytest.mark.parametrize(
    "query",
    [
        "to=9999-12-31",
        "from=9999-12-31T23:59:59-23:00",
        "from=0001-01-01T00:00:00%2B23:00",
    ],
)
def test_dates_out_of_range_are_400(owner_client, query):
    body = assert_error(
        owner_client.get(f"/api/wallet/v1/transactions?{query}"), 400, "VALIDATION_ERROR"
    )
    assert list(body["details"]["fields"]) == [query.split("=")[0]]


def test_integers_beyond_the_columns_are_400(owner_client, staff_client):
    huge = "99999999999999999999"
    body = assert_error(
        staff_client.get(f"/api/admin/workflow-bindings?ability={huge}"), 400, "VALIDATION_ERROR"
    )
    assert body["details"]["fields"] == {"ability": ["Out of range."]}
    # The connection is still usable afterwards (PostgreSQL: no aborted transaction left).
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_admin_numbers_beyond_an_integer_column_are_named_in_a_400(staff_client):
    """Found by the schema fuzz: a vendor key priority of -290668241380 was a 500."""

    response = staff_client.post(
        "/api/admin/api-keys",
        {"provider": "coze", "name": "k", "secret": "s3cret", "priority": -290668241380},
    )
    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert list(body["details"]["fields"]) == ["priority"]
    response = staff_client.post(
        "/api/admin/workflow-bindings",
        {"ability": 1, "workflow": 1, "executor": 1, "queueTimeout": 2**40},
    )
    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert list(body["details"]["fields"]) == ["queueTimeout"]
    assert VendorApiKey.objects.count() == 0
