"""The local backend end to end over real HTTP: ``manage.py up`` runs as a subprocess on a free
port (its own data dir, and its own database on PostgreSQL) and the test talks to it with httpx:
upload key → sts → PUT → complete → signed download → the same bytes; expired URLs refused."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from django.test import override_settings

from media_app import tokens
from tests.media_app.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-upload-token-secret-0123456789abcdef"
PASSWORD = "Sup3r-secret-pass-for-e2e"
DATA = png_bytes(31, 17, "blue")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PODI_DATA_DIR": str(tmp_path_factory.mktemp("podi-up")),
        "PODI_ADMIN_PASSWORD": PASSWORD,
        "ALLOW_REGISTRATION": "true",
        "PUBLIC_BASE_URL": base,
        "UPLOAD_TOKEN_SECRET": SECRET,
        "STORAGE_BACKEND": "local",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MEDIA_ROOT", None)
    admin_url = None
    database = None
    if os.environ.get("DATABASE_URL"):
        database = f"podi_media_e2e_{os.getpid()}_{int(time.time())}"
        admin_url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        env["DATABASE_URL"] = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + f"/{database}"
        env["REDIS_PREFIX"] = f"podi-media-e2e-{os.getpid()}"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--no-worker", "--no-reconciler", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            output.append(line)
            if "PODI is up" in line or process.poll() is not None:
                break
        assert "PODI is up" in "".join(output), "".join(output)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        if database:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=15) as client:
        yield client


def _user(http, username: str) -> dict:
    response = http.post("/api/auth/v1/register", json={"username": username, "password": PASSWORD})
    if response.status_code != 201:
        response = http.post(
            "/api/auth/v1/login", json={"username": username, "password": PASSWORD}
        )
    assert response.status_code in (200, 201), response.text
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


@pytest.fixture(scope="module")
def alice(http):
    return _user(http, "alice")


@pytest.fixture(scope="module")
def bob(http):
    return _user(http, "bob")


def _grant(http, auth, data=DATA) -> dict:
    key = http.post("/api/media/v1/upload-key", json={}, headers=auth)
    assert key.status_code == 200, key.text
    grant = http.post(
        "/api/media/v1/sts",
        json={
            "uploadKey": key.json()["uploadKey"],
            "fileName": "blue.png",
            "mimeType": "image/png",
            "fileSize": len(data),
        },
    )
    assert grant.status_code == 200, grant.text
    return grant.json()


def test_upload_complete_download_over_http(server, http, alice):
    started = int(time.time())
    grant = _grant(http, alice)
    assert grant["provider"] == "local"
    assert grant["uploadUrl"].startswith(f"{server}/media-upload/")
    with override_settings(UPLOAD_TOKEN_SECRET=SECRET):
        put_grant = tokens.local_put_read(grant["uploadUrl"].rsplit("/", 1)[1])
    assert started + 900 <= put_grant.expires_at <= int(time.time()) + 900

    put = http.put(grant["uploadUrl"], content=DATA, headers=grant["headers"])
    assert put.status_code == 200, put.text
    done = http.post(
        "/api/media/v1/complete", json={"objectKey": grant["objectKey"]}, headers=alice
    )
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["width"], done.json()["height"]) == (
        "uploaded", 31, 17,
    )  # fmt: skip

    signed = http.post(
        "/api/media/v1/signed-download",
        json={"objectKey": grant["objectKey"], "ttl": 60},
        headers=alice,
    )
    assert signed.status_code == 200, signed.text
    url = signed.json()["url"]
    assert url.startswith(f"{server}/media-download/")
    downloaded = httpx.get(url, timeout=15)
    assert downloaded.status_code == 200
    assert downloaded.content == DATA
    assert downloaded.headers["content-type"] == "image/png"


def test_both_urls_expire(server, http, alice):
    grant = _grant(http, alice)
    with override_settings(UPLOAD_TOKEN_SECRET=SECRET):
        short_put, _ = tokens.local_put_token(
            object_key=grant["objectKey"], size=len(DATA), mime_type="image/png", ttl=3
        )
        short_get, _ = tokens.local_get_token(object_key=grant["objectKey"], ttl=3)
    put = http.put(
        f"/media-upload/{short_put}", content=DATA, headers={"Content-Type": "image/png"}
    )
    assert put.status_code == 200, put.text  # valid while fresh
    http.post("/api/media/v1/complete", json={"objectKey": grant["objectKey"]}, headers=alice)
    fresh = http.get(f"/media-download/{short_get}")
    assert fresh.status_code == 200
    assert fresh.content == DATA

    time.sleep(3.2)
    expired_put = http.put(
        f"/media-upload/{short_put}", content=DATA, headers={"Content-Type": "image/png"}
    )
    assert expired_put.status_code == 401
    assert expired_put.json()["code"] == "MEDIA_UPLOAD_UNAUTHORIZED"
    assert "expired" in expired_put.json()["message"]
    expired_get = http.get(f"/media-download/{short_get}")
    assert expired_get.status_code == 403
    assert expired_get.json() == {
        "code": "MEDIA_DOWNLOAD_DENIED",
        "message": "The download URL is not valid (expired).",
        "details": {},
    }


def test_refused_put_stores_nothing_over_http(http, alice):
    grant = _grant(http, alice)
    wrong = http.put(grant["uploadUrl"], content=DATA + b"!", headers=grant["headers"])
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "MEDIA_UPLOAD_MISMATCH"
    incomplete = http.post(
        "/api/media/v1/complete", json={"objectKey": grant["objectKey"]}, headers=alice
    )
    assert incomplete.status_code == 409
    assert incomplete.json()["code"] == "MEDIA_UPLOAD_INCOMPLETE"


def test_chunked_put_bodies_are_measured_while_streaming(http, alice):
    grant = _grant(http, alice)

    def body(data, step=16):
        for start in range(0, len(data), step):
            yield data[start : start + step]

    too_long = http.put(
        grant["uploadUrl"], content=body(DATA + b"x" * 100), headers=grant["headers"]
    )
    assert too_long.status_code == 413
    assert too_long.json()["code"] == "MEDIA_TOO_LARGE"
    assert (
        http.post(
            "/api/media/v1/complete", json={"objectKey": grant["objectKey"]}, headers=alice
        ).json()["code"]
        == "MEDIA_UPLOAD_INCOMPLETE"
    )
    exact = http.put(grant["uploadUrl"], content=body(DATA), headers=grant["headers"])
    assert exact.status_code == 200, exact.text
    done = http.post(
        "/api/media/v1/complete", json={"objectKey": grant["objectKey"]}, headers=alice
    )
    assert done.json()["status"] == "uploaded"


def test_someone_elses_object_over_http(http, alice, bob):
    grant = _grant(http, alice)
    http.put(grant["uploadUrl"], content=DATA, headers=grant["headers"])
    complete = http.post(
        "/api/media/v1/complete", json={"objectKey": grant["objectKey"]}, headers=bob
    )
    assert complete.status_code == 404
    assert complete.json()["code"] == "MEDIA_OBJECT_NOT_FOUND"
    http.post("/api/media/v1/complete", json={"objectKey": grant["objectKey"]}, headers=alice)
    download = http.post(
        "/api/media/v1/signed-download", json={"objectKey": grant["objectKey"]}, headers=bob
    )
    assert download.status_code == 403
    assert download.json()["code"] == "MEDIA_DOWNLOAD_DENIED"


def test_revoked_upload_key_over_http(http, bob):
    key = http.post("/api/media/v1/upload-key", json={}, headers=bob).json()["uploadKey"]
    assert http.post("/api/media/v1/upload-key/revoke", json={}, headers=bob).status_code == 200
    refused = http.post(
        "/api/media/v1/sts",
        json={"uploadKey": key, "fileName": "a.png", "mimeType": "image/png", "fileSize": 10},
    )
    assert refused.status_code == 401
    assert refused.json()["code"] == "MEDIA_UPLOAD_UNAUTHORIZED"
