import socket
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.throttling import SimpleRateThrottle

from podi.idempotency import purge_expired_idempotency_records
from podi.models import IdempotencyRecord, Lease
from tests.conftest import Client, access_token

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.podi.urls")]


def assert_envelope(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code
    assert body["message"]
    assert "X-Request-ID" in response
    return body


def test_400_validation_error_names_fields(owner_client):
    body = assert_envelope(
        owner_client.post("/api/test/things", {"name": ""}), 400, "VALIDATION_ERROR"
    )
    assert list(body["details"]["fields"]) == ["name"]


def test_400_malformed_json(owner_client):
    response = owner_client.generic("POST", "/api/test/things", "{not json")
    assert_envelope(response, 400, "INVALID_JSON")


def test_401(anon):
    assert_envelope(anon.post("/api/test/things", {"name": "x"}), 401, "AUTH_REQUIRED")


def test_403_for_non_staff_and_for_a_key_without_the_scope(owner_client, client_for, service_key):
    assert_envelope(owner_client.get("/api/test/staff-only"), 403, "FORBIDDEN")
    _, raw = service_key(scopes=["media:read"])
    assert_envelope(client_for(raw).post("/api/test/scoped", {}), 403, "FORBIDDEN")
    _, raw_write = service_key(scopes=["wallet:write"], name="w")
    assert client_for(raw_write).post("/api/test/scoped", {}).status_code == 200
    assert client_for(raw).get("/api/test/scoped").status_code == 403
    _, raw_read = service_key(scopes=["wallet:read"], name="r")
    assert client_for(raw_read).get("/api/test/scoped").status_code == 200
    assert client_for(raw_read).post("/api/test/scoped", {}).status_code == 403


def test_pagination_envelope_and_limits(staff_client, owner, teammate, outsider):
    body = staff_client.get("/api/test/users?page=2&pageSize=2").json()
    assert body["total"] == 4
    assert body["page"] == 2
    assert body["pageSize"] == 2
    assert body["totalPages"] == 2
    assert len(body["items"]) == 2
    too_big = staff_client.get("/api/test/users?pageSize=101")
    assert_envelope(too_big, 400, "VALIDATION_ERROR")
    assert_envelope(staff_client.get("/api/test/users?page=zero"), 400, "VALIDATION_ERROR")


def test_404_unknown_api_route_is_json(owner_client):
    body = assert_envelope(owner_client.get("/api/nowhere"), 404, "NOT_FOUND")
    assert body["details"] == {"path": "/api/nowhere"}


def test_405(owner_client):
    assert_envelope(owner_client.delete("/api/auth/v1/me"), 405, "METHOD_NOT_ALLOWED")


def test_500_has_a_code_and_no_stack_trace(anon):
    anon.raise_request_exception = False
    response = anon.get("/api/test/boom", HTTP_X_REQUEST_ID="req-123")
    body = assert_envelope(response, 500, "INTERNAL_ERROR")
    assert body["details"] == {"requestId": "req-123"}
    assert response["X-Request-ID"] == "req-123"
    text = response.content.decode()
    assert "secret internal detail" not in text
    assert "Traceback" not in text


def test_request_id_is_generated_when_missing_or_insane(anon):
    generated = anon.get("/health")["X-Request-ID"]
    assert len(generated) == 32
    assert anon.get("/health", HTTP_X_REQUEST_ID="bad id\n")["X-Request-ID"] != "bad id\n"


def test_429_rate_limited_with_retry_after(owner_client, settings):
    rates = {**SimpleRateThrottle.THROTTLE_RATES, "principal": "2/min"}
    original = SimpleRateThrottle.THROTTLE_RATES
    SimpleRateThrottle.THROTTLE_RATES = rates
    try:
        assert owner_client.get("/api/auth/v1/me").status_code == 200
        assert owner_client.get("/api/auth/v1/me").status_code == 200
        response = owner_client.get("/api/auth/v1/me")
    finally:
        SimpleRateThrottle.THROTTLE_RATES = original
    body = assert_envelope(response, 429, "RATE_LIMITED")
    assert int(response["Retry-After"]) > 0
    assert body["details"]["retryAfter"] == int(response["Retry-After"])


# --- Idempotency -----------------------------------------------------------------------------


def test_idempotent_replay_returns_the_first_response(owner_client):
    first = owner_client.post("/api/test/things", {"name": "a"}, HTTP_IDEMPOTENCY_KEY="k1")
    second = owner_client.post("/api/test/things", {"name": "a"}, HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second["Idempotent-Replayed"] == "true"
    assert Lease.objects.filter(name__startswith="thing_").count() == 1


def test_same_key_with_another_body_is_409(owner_client):
    owner_client.post("/api/test/things", {"name": "a"}, HTTP_IDEMPOTENCY_KEY="k1")
    response = owner_client.post("/api/test/things", {"name": "b"}, HTTP_IDEMPOTENCY_KEY="k1")
    assert_envelope(response, 409, "IDEMPOTENCY_KEY_REUSED")
    assert Lease.objects.filter(name__startswith="thing_").count() == 1


def test_keys_are_per_principal(owner_client, client_for, teammate):
    a = owner_client.post("/api/test/things", {"name": "a"}, HTTP_IDEMPOTENCY_KEY="k1")
    b = client_for(teammate).post("/api/test/things", {"name": "a"}, HTTP_IDEMPOTENCY_KEY="k1")
    assert a.json()["id"] != b.json()["id"]
    assert Lease.objects.filter(name__startswith="thing_").count() == 2


def test_an_error_releases_the_key(owner_client):
    bad = owner_client.post("/api/test/things", {"name": "x" * 50}, HTTP_IDEMPOTENCY_KEY="k2")
    assert bad.status_code == 400
    good = owner_client.post("/api/test/things", {"name": "x" * 50}, HTTP_IDEMPOTENCY_KEY="k2")
    assert good.status_code == 400
    fixed = owner_client.post("/api/test/things", {"name": "ok"}, HTTP_IDEMPOTENCY_KEY="k3")
    assert fixed.status_code == 201


def test_expired_records_are_not_replayed(owner_client, settings):
    first = owner_client.post("/api/test/things", {"name": "a"}, HTTP_IDEMPOTENCY_KEY="old")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    second = owner_client.post("/api/test/things", {"name": "a"}, HTTP_IDEMPOTENCY_KEY="old")
    assert second.json()["id"] != first.json()["id"]
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert purge_expired_idempotency_records() == 1


def test_an_unreachable_redis_answers_503_with_a_code(settings, owner, transactional_db):
    """Rate limits live in the cache: with Redis down the API answers 503, not 500."""

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
        }
    }
    response = Client(access_token(owner)).get("/api/tasks/v1")
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert response["Retry-After"] == "2"
