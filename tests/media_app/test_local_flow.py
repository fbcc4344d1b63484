"""Local backend through the Django test client: PUT, complete, signed download, refusals."""

import hashlib
from pathlib import Path

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from media_app.models import MediaObject, MediaStatus
from media_app.services import signed_download_url
from tests.media_app.conftest import png_bytes

pytestmark = pytest.mark.django_db

DATA = png_bytes(7, 5)


@pytest.fixture
def grant(anon, owner, upload_key):
    """A pending upload of DATA for owner: the sts answer."""
    response = anon.post(
        "/api/media/v1/sts",
        {
            "uploadKey": upload_key(owner),
            "fileName": "cat.png",
            "mimeType": "image/png",
            "fileSize": len(DATA),
        },
    )
    assert response.status_code == 200
    return response.json()


def local_path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def put(client, grant, data=DATA, content_type="image/png"):
    return client.generic("PUT", local_path(grant["uploadUrl"]), data, content_type=content_type)


def stored_file(settings, key: str) -> Path:
    return Path(settings.MEDIA_ROOT) / key


def test_put_complete_download(anon, owner_client, grant, settings):
    response = put(anon, grant)
    assert response.status_code == 200
    assert response.json() == {"objectKey": grant["objectKey"], "status": "stored"}
    assert stored_file(settings, grant["objectKey"]).read_bytes() == DATA
    assert MediaObject.objects.get().status == MediaStatus.PENDING

    done = owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert done.status_code == 200
    body = done.json()
    media = MediaObject.objects.get()
    assert body == {
        "objectKey": grant["objectKey"],
        "status": "uploaded",
        "purpose": "input",
        "ownerId": media.owner_id,
        "bucket": "",
        "fileName": "cat.png",
        "size": len(DATA),
        "mimeType": "image/png",
        "sha256": hashlib.sha256(DATA).hexdigest(),
        "width": 7,
        "height": 5,
        "taskId": "",
        "createdAt": media.created_at.isoformat().replace("+00:00", "Z"),
        "uploadedAt": media.uploaded_at.isoformat().replace("+00:00", "Z"),
    }
    again = owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert again.json() == body

    signed = owner_client.post(
        "/api/media/v1/signed-download", {"objectKey": grant["objectKey"], "ttl": 120}
    )
    assert signed.status_code == 200
    download = anon.get(local_path(signed.json()["url"]))
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == DATA
    assert download["Content-Type"] == "image/png"
    assert download["Content-Length"] == str(len(DATA))


def test_a_used_put_url_cannot_overwrite_a_completed_upload(anon, owner_client, grant, settings):
    put(anon, grant)
    owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    response = put(anon, grant, data=b"\x89PNG evil" + b"x" * (len(DATA) - 9))
    assert response.status_code == 401
    assert response.json()["code"] == "MEDIA_UPLOAD_UNAUTHORIZED"
    assert stored_file(settings, grant["objectKey"]).read_bytes() == DATA


@pytest.mark.parametrize(
    ("data", "content_type", "code", "status"),
    [
        (DATA, "image/jpeg", "MEDIA_UPLOAD_MISMATCH", 400),
        (DATA + b"more", "image/png", "MEDIA_UPLOAD_MISMATCH", 400),
        (DATA[:-1], "image/png", "MEDIA_UPLOAD_MISMATCH", 400),
    ],
)
def test_put_refuses_another_type_or_size_and_keeps_nothing(
    anon, owner_client, grant, settings, data, content_type, code, status
):
    response = put(anon, grant, data=data, content_type=content_type)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert not stored_file(settings, grant["objectKey"]).exists()
    incomplete = owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert incomplete.status_code == 409
    assert incomplete.json()["code"] == "MEDIA_UPLOAD_INCOMPLETE"
    assert MediaObject.objects.get().status == MediaStatus.PENDING


def test_put_with_a_forged_token(anon, grant, settings):
    url = local_path(grant["uploadUrl"])
    response = anon.generic("PUT", url[:-3] + "abc", DATA, content_type="image/png")
    assert response.status_code == 401
    assert response.json()["code"] == "MEDIA_UPLOAD_UNAUTHORIZED"
    assert not stored_file(settings, grant["objectKey"]).exists()


def test_upload_urls_accept_only_put(anon, grant):
    response = anon.post(local_path(grant["uploadUrl"]), {})
    assert response.status_code == 405
    assert response["Allow"] == "PUT"
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"


def test_complete_notices_a_wrong_object_and_removes_it(owner_client, grant, settings):
    path = stored_file(settings, grant["objectKey"])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the declared bytes")
    response = owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert response.status_code == 400
    assert response.json()["code"] == "MEDIA_UPLOAD_MISMATCH"
    assert response.json()["details"] == {
        "declaredSize": len(DATA),
        "storedSize": 22,
        "declaredType": "image/png",
        "storedType": None,
    }
    assert not path.exists()
    assert MediaObject.objects.get().status == MediaStatus.DELETED


def test_someone_elses_object_key(anon, client_for, outsider, grant, staff_client):
    put(anon, grant)
    outsider_client = client_for(outsider)
    complete = outsider_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert complete.status_code == 404
    assert complete.json()["code"] == "MEDIA_OBJECT_NOT_FOUND"
    unknown = outsider_client.post("/api/media/v1/complete", {"objectKey": "uploads/1/x.png"})
    assert unknown.json() == complete.json()
    assert MediaObject.objects.get().status == MediaStatus.PENDING
    assert (
        staff_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]}).json()[
            "status"
        ]
        == "uploaded"
    )

    denied = outsider_client.post(
        "/api/media/v1/signed-download", {"objectKey": grant["objectKey"]}
    )
    assert denied.status_code == 403
    assert denied.json()["code"] == "MEDIA_DOWNLOAD_DENIED"
    missing = outsider_client.post("/api/media/v1/signed-download", {"objectKey": "nope"})
    assert missing.json() == denied.json()
    assert (
        staff_client.post(
            "/api/media/v1/signed-download", {"objectKey": grant["objectKey"]}
        ).status_code
        == 200
    )


def test_signed_download_rules(owner_client, grant, client_for, service_key):
    own_pending = owner_client.post(
        "/api/media/v1/signed-download", {"objectKey": grant["objectKey"]}
    )
    assert own_pending.status_code == 404
    assert own_pending.json()["code"] == "MEDIA_OBJECT_NOT_FOUND"
    for ttl in (59, 3601):
        response = owner_client.post(
            "/api/media/v1/signed-download", {"objectKey": grant["objectKey"], "ttl": ttl}
        )
        assert response.status_code == 400
        assert response.json()["code"] == "VALIDATION_ERROR"
    MediaObject.objects.update(status=MediaStatus.UPLOADED)
    _, writer = service_key(scopes=["media:write"])
    assert (
        client_for(writer)
        .post("/api/media/v1/signed-download", {"objectKey": grant["objectKey"]})
        .status_code
        == 200
    )
    _, reader = service_key(scopes=["media:read"], name="reader")
    assert (
        client_for(reader)
        .post("/api/media/v1/signed-download", {"objectKey": grant["objectKey"]})
        .json()["code"]
        == "FORBIDDEN"
    )
    before = timezone.now()
    response = owner_client.post("/api/media/v1/signed-download", {"objectKey": grant["objectKey"]})
    expires = response.json()["expiresAt"]
    assert expires.endswith("Z")

    delta = (parse_datetime(expires) - before).total_seconds()
    assert 599 <= delta <= 601


def test_download_urls_are_forgery_proof_and_check_the_row(anon, grant, settings):
    put(anon, grant)
    MediaObject.objects.update(status=MediaStatus.UPLOADED)
    url, _ = signed_download_url(object_key=grant["objectKey"], ttl=60)
    tampered = anon.get(local_path(url)[:-4] + "AAAA")
    assert tampered.status_code == 403
    assert tampered.json()["code"] == "MEDIA_DOWNLOAD_DENIED"
    MediaObject.objects.update(status=MediaStatus.DELETED)
    gone = anon.get(local_path(url))
    assert gone.status_code == 404
    assert gone.json()["code"] == "MEDIA_OBJECT_NOT_FOUND"


def test_browsers_may_call_the_signed_urls_cross_origin(anon, grant, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    preflight = anon.options(
        local_path(grant["uploadUrl"]),
        HTTP_ORIGIN="https://app.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="PUT",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="content-type",
    )
    assert preflight.status_code == 200
    assert preflight["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "PUT" in preflight["Access-Control-Allow-Methods"]
    other = anon.options(
        local_path(grant["uploadUrl"]),
        HTTP_ORIGIN="https://evil.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="PUT",
    )
    assert "Access-Control-Allow-Origin" not in other
