"""S3 backend end to end against moto's S3 server on loopback, through django-storages.

moto stores what it is sent but enforces neither signatures nor POST policy conditions nor
expiry, so the policy and the presigned URL's parameters are asserted separately below.
"""

import base64
import hashlib
import io
import json
import time
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from media_app.models import MediaObject, MediaStatus
from media_app.services import media_open, media_store_output, signed_download_url
from media_app.storage import get_backend
from media_app.storage.s3 import PodiS3Storage
from podi.errors import AppError
from tests.media_app.conftest import closed_port, png_bytes

pytestmark = pytest.mark.django_db

DATA = png_bytes(12, 8)


def sts(anon, key, data=DATA, mime="image/png"):
    response = anon.post(
        "/api/media/v1/sts",
        {"uploadKey": key, "fileName": "p.png", "mimeType": mime, "fileSize": len(data)},
    )
    assert response.status_code == 200, response.json()
    return response.json()


def post_form(grant, data=DATA, content_type="image/png"):
    return httpx.post(
        grant["url"],
        data=grant["fields"],
        files={"file": ("p.png", data, content_type)},
        timeout=10,
    )


def test_presigned_post_complete_presigned_get(
    anon, owner, owner_client, upload_key, s3_storage, moto_server
):
    before = timezone.now()
    grant = sts(anon, upload_key(owner))
    assert grant["provider"] == "s3"
    assert grant["bucket"] == s3_storage
    assert grant["method"] == "POST"
    assert grant["url"] == f"{moto_server}/{s3_storage}"
    fields = grant["fields"]
    assert fields["key"] == grant["objectKey"]
    assert fields["Content-Type"] == "image/png"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert fields["x-amz-credential"].startswith("test/")
    assert fields["x-amz-credential"].endswith("/us-east-1/s3/aws4_request")
    assert "test" not in fields["x-amz-signature"]

    policy = json.loads(base64.b64decode(fields["policy"]))
    assert {"bucket": s3_storage} in policy["conditions"]
    assert {"key": grant["objectKey"]} in policy["conditions"]
    assert {"Content-Type": "image/png"} in policy["conditions"]
    assert ["content-length-range", len(DATA), len(DATA)] in policy["conditions"]
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=895) <= expiration <= timezone.now() + timedelta(seconds=901)
    assert grant["expireIn"] == 900

    incomplete = owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert incomplete.status_code == 409
    assert incomplete.json()["code"] == "MEDIA_UPLOAD_INCOMPLETE"

    uploaded = post_form(grant)
    assert uploaded.status_code in (200, 204), uploaded.text

    done = owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert done.status_code == 200, done.json()
    body = done.json()
    assert (body["status"], body["size"], body["mimeType"]) == ("uploaded", len(DATA), "image/png")
    assert (body["width"], body["height"], body["bucket"]) == (12, 8, s3_storage)

    signed = owner_client.post(
        "/api/media/v1/signed-download", {"objectKey": grant["objectKey"], "ttl": 300}
    ).json()
    query = parse_qs(urlsplit(signed["url"]).query)
    assert query["X-Amz-Expires"] == ["300"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    assert abs(signed_at.timestamp() - time.time()) < 60
    assert urlsplit(signed["url"]).path == f"/{s3_storage}/{grant['objectKey']}"
    fetched = httpx.get(signed["url"], timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == DATA


@pytest.mark.parametrize(
    ("data", "content_type", "stored_type"),
    [(DATA + b"extra", "image/png", "image/png"), (DATA, "text/html", "text/html")],
)
def test_complete_refuses_and_removes_what_the_policy_should_have_stopped(
    anon, owner, owner_client, upload_key, s3_storage, s3_client, data, content_type, stored_type
):
    grant = sts(anon, upload_key(owner))
    fields = dict(grant["fields"], **{"Content-Type": content_type})
    assert httpx.post(
        grant["url"], data=fields, files={"file": ("p", data, content_type)}, timeout=10
    ).status_code in (200, 204)
    response = owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert response.status_code == 400
    assert response.json()["code"] == "MEDIA_UPLOAD_MISMATCH"
    assert response.json()["details"] == {
        "declaredSize": len(DATA),
        "storedSize": len(data),
        "declaredType": "image/png",
        "storedType": stored_type,
    }
    listed = s3_client.list_objects_v2(Bucket=s3_storage)
    assert listed.get("KeyCount", 0) == 0
    assert MediaObject.objects.get().status == MediaStatus.DELETED


def test_outputs_stream_into_s3_in_parts(owner, s3_storage, s3_client):
    data = bytes(range(256)) * (40 * 1024 + 7)  # ~10 MiB: a multipart upload
    media = media_store_output(
        user_id=owner.pk,
        task_id="tsk_s3",
        filename="clip.mp4",
        stream=io.BufferedReader(io.BytesIO(data)),
        mime_type="video/mp4",
    )
    assert media.object_key == f"results/{owner.pk}/tsk_s3/clip.mp4"
    assert (media.size, media.sha256, media.bucket, media.backend) == (
        len(data), hashlib.sha256(data).hexdigest(), s3_storage, "s3",
    )  # fmt: skip
    head = s3_client.head_object(Bucket=s3_storage, Key=media.object_key)
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "video/mp4"
    assert head["ETag"].strip('"').endswith("-2")  # two 8 MiB-bounded parts
    with media_open(object_key=media.object_key) as stream:
        assert stream.read(10) == data[:10]
    url, expires_at = signed_download_url(object_key=media.object_key, ttl=120)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["120"]
    assert httpx.get(url, timeout=30).content == data


def test_backend_interface_on_s3(owner, s3_storage):
    backend = get_backend()
    assert backend.name == "s3"
    assert isinstance(backend.storage, PodiS3Storage)
    saved = backend.save_stream("files/a/b.txt", io.BytesIO(b"hello"), mime_type="text/plain")
    assert (saved.size, saved.sha256) == (5, hashlib.sha256(b"hello").hexdigest())
    stat = backend.stat("files/a/b.txt")
    assert (stat.size, stat.content_type) == (5, "text/plain")
    assert backend.exists("files/a/b.txt") and backend.size("files/a/b.txt") == 5
    assert backend.stat("files/a/none.txt") is None
    assert [item.key for item in backend.list("files/a/")] == ["files/a/b.txt"]
    assert backend.read_head("files/a/b.txt", 3) == b"hel"
    backend.delete("files/a/b.txt")
    assert not backend.exists("files/a/b.txt")
    assert backend.storage.exists("files/a/b.txt") is False


def test_file_api_on_s3(staff_client, s3_storage, s3_client):
    response = staff_client.post(
        "/api/media/v1/files",
        {"path": "t/a.wav", "file": SimpleUploadedFile("a.wav", b"RIFF", "audio/wav")},
        format="multipart",
    )
    assert response.status_code == 201
    assert s3_client.get_object(Bucket=s3_storage, Key="files/t/a.wav")["Body"].read() == b"RIFF"
    got = staff_client.get("/api/media/v1/files/t/a.wav")
    assert b"".join(got.streaming_content) == b"RIFF"
    assert staff_client.delete("/api/media/v1/files/t/a.wav").status_code == 200
    assert s3_client.list_objects_v2(Bucket=s3_storage).get("KeyCount", 0) == 0


def test_unreachable_s3_is_a_clean_502(owner, settings, s3_storage):
    settings.S3_ENDPOINT_URL = f"http://127.0.0.1:{closed_port()}"

    with pytest.raises(AppError) as caught:
        media_store_output(user_id=owner.pk, task_id="t", filename="x", stream=io.BytesIO(b"1"))
    assert caught.value.code == "MEDIA_STORAGE_ERROR"
    assert caught.value.status == 502
    assert not MediaObject.objects.exists()
