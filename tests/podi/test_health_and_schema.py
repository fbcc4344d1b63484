import pytest
from django.core.management import call_command
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_health_ok(anon):
    response = anon.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "channelLayer", "broker", "storage"}
    assert all(check["status"] == "ok" for check in body["checks"].values())


def close_connection_and_pool():
    """Close the connection, and on PostgreSQL the process's pool, which holds the settings it
    was made with."""
    connection.close()
    if connection.vendor == "postgresql" and connection.pool is not None:
        connection.close_pool()


def test_health_503_names_the_database_when_it_is_down(anon):
    original = dict(connection.settings_dict)
    close_connection_and_pool()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = "/nonexistent-dir/podi.sqlite3"
    else:
        connection.settings_dict["HOST"] = "127.0.0.1"
        connection.settings_dict["PORT"] = "1"
    try:
        response = anon.get("/health")
    finally:
        close_connection_and_pool()
        connection.settings_dict.clear()
        connection.settings_dict.update(original)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "error"
    assert body["checks"]["database"]["error"]
    assert body["checks"]["storage"]["status"] == "ok"


def test_schema_generates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(out), "--validate", "--fail-on-warn")
    text = out.read_text()
    assert "/api/auth/v1/login" in text


def test_docs_are_served_locally(anon):
    response = anon.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower()
    assert "/static/drf_spectacular_sidecar/" in html
    schema = anon.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    assert schema.json()["info"]["title"] == "PODI API"
