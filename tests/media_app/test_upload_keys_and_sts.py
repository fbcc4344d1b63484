import re
import time
from datetime import timedelta

import pytest
from django.core import signing
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from media_app import tokens
from media_app.models import MediaObject, MediaStatus, UploadKeyVersion
from tests.media_app.conftest import png_bytes

pytestmark = pytest.mark.django_db

STS = "/api/media/v1/sts"


def sts_body(key, **overrides):
    body = {"uploadKey": key, "fileName": "cat.png", "mimeType": "image/png", "fileSize": 75}
    body.update(overrides)
    return body


def test_upload_key_for_the_caller(owner_client, owner):
    before = timezone.now()
    response = owner_client.post("/api/media/v1/upload-key", {})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"uploadKey", "expiresIn", "expiresAt"}
    assert body["uploadKey"].startswith("upk_")
    assert body["expiresIn"] == 3600
    expires_at = parse_datetime(body["expiresAt"])
    assert (
        before + timedelta(seconds=3599) <= expires_at <= timezone.now() + timedelta(seconds=3601)
    )
    claims = tokens.upload_key_read(body["uploadKey"])
    assert (claims.user_id, claims.version) == (owner.pk, 1)


def test_upload_key_on_behalf_needs_a_service_key_or_staff(
    client_for, owner, teammate, service_key, staff_client
):
    assert client_for(owner).post("/api/media/v1/upload-key", {"userId": teammate.pk}).json() == {
        "code": "FORBIDDEN",
        "message": "You may act only for yourself.",
        "details": {},
    }
    _, writer = service_key(scopes=["media:write"])
    response = client_for(writer).post("/api/media/v1/upload-key", {"userId": teammate.pk})
    assert response.status_code == 200
    assert tokens.upload_key_read(response.json()["uploadKey"]).user_id == teammate.pk
    _, reader = service_key(scopes=["media:read"], name="reader")
    denied = client_for(reader).post("/api/media/v1/upload-key", {"userId": teammate.pk})
    assert denied.status_code == 403
    assert denied.json()["code"] == "FORBIDDEN"
    assert staff_client.post("/api/media/v1/upload-key", {"userId": 999999}).json()["code"] == (
        "USER_NOT_FOUND"
    )


def test_upload_key_needs_authentication(anon):
    response = anon.post("/api/media/v1/upload-key", {})
    assert response.status_code == 401
    assert response.json()["code"] == "AUTH_REQUIRED"


def test_sts_local_grants_a_signed_put(anon, owner, upload_key, settings):
    settings.PUBLIC_BASE_URL = "https://podi.example.com"
    before = int(time.time())
    response = anon.post(STS, sts_body(upload_key(owner), taskId="tsk_1"))
    assert response.status_code == 200, response.json()
    body = response.json()
    assert set(body) == {
        "provider", "objectKey", "expireIn", "expiresAt", "bucket", "method", "uploadUrl", "headers",
    }  # fmt: skip
    assert body["provider"] == "local"
    assert re.fullmatch(rf"uploads/{owner.pk}/\d{{8}}/[0-9a-f]{{32}}\.png", body["objectKey"])
    assert body["expireIn"] == 900
    assert body["method"] == "PUT"
    assert body["headers"] == {"Content-Type": "image/png"}
    prefix = "https://podi.example.com/media-upload/"
    assert body["uploadUrl"].startswith(prefix)
    grant = tokens.local_put_read(body["uploadUrl"][len(prefix) :])
    assert (grant.object_key, grant.size, grant.mime_type) == (body["objectKey"], 75, "image/png")
    assert before + 900 <= grant.expires_at <= int(time.time()) + 900
    media = MediaObject.objects.get()
    assert (media.object_key, media.owner_id, media.status, media.purpose) == (
        body["objectKey"], owner.pk, "pending", "input",
    )  # fmt: skip
    assert (media.size, media.mime_type, media.file_name, media.task_id, media.backend) == (
        75, "image/png", "cat.png", "tsk_1", "local",
    )  # fmt: skip


def test_sts_uses_the_root_prefix(anon, owner, upload_key, settings):
    settings.MEDIA_UPLOAD_PREFIX = "test"
    body = anon.post(STS, sts_body(upload_key(owner))).json()
    assert body["objectKey"].startswith(f"test/{owner.pk}/")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mimeType": "text/html"}, "mimeType"),
        ({"mimeType": "application/x-msdownload"}, "mimeType"),
        ({"fileSize": 50 * 1024 * 1024 + 1}, "fileSize"),
        ({"fileSize": 0}, "fileSize"),
        ({"fileSize": -5}, "fileSize"),
        ({"fileName": "a\x07b.png"}, "fileName"),
    ],
)
def test_sts_refuses_bad_parameters_and_stores_nothing(anon, owner, upload_key, overrides, field):
    response = anon.post(STS, sts_body(upload_key(owner), **overrides))
    assert response.status_code == 400
    assert response.json()["code"] == "MEDIA_STS_INVALID_PARAM"
    assert response.json()["details"]["field"] == field
    assert not MediaObject.objects.exists()


def test_sts_size_limit_is_configurable(anon, owner, upload_key, settings):
    settings.MEDIA_MAX_UPLOAD_BYTES = 100
    assert anon.post(STS, sts_body(upload_key(owner), fileSize=100)).status_code == 200
    refused = anon.post(STS, sts_body(upload_key(owner), fileSize=101))
    assert refused.json()["details"] == {"field": "fileSize", "maxBytes": 100}


def test_sts_missing_fields_are_validation_errors(anon, owner, upload_key):
    response = anon.post(STS, {"uploadKey": upload_key(owner)})
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert set(response.json()["details"]["fields"]) == {"fileName", "mimeType", "fileSize"}
    assert not MediaObject.objects.exists()


def _assert_unauthorized(response, fragment):
    assert response.status_code == 401, response.json()
    assert response.json()["code"] == "MEDIA_UPLOAD_UNAUTHORIZED"
    assert fragment in response.json()["message"]
    assert not MediaObject.objects.exists()


def test_sts_without_a_key(anon):
    _assert_unauthorized(anon.post(STS, sts_body(None)), "uploadKey is required")
    _assert_unauthorized(anon.post(STS, {"fileName": "a.png"}), "uploadKey is required")


def test_sts_ignores_a_bearer_token_it_does_not_need(client_for, owner, upload_key):
    client = client_for("not-a-valid-jwt")
    assert client.post(STS, sts_body(upload_key(owner))).status_code == 200


def test_forged_keys_are_refused(anon, owner, upload_key):
    key = upload_key(owner)
    _assert_unauthorized(anon.post(STS, sts_body(key[:-2] + "xx")), "bad signature")
    # Same payload for another user, re-encoded without the secret.
    payload, stamp, signature = key[len("upk_") :].split(":")
    forged_payload = signing.b64_encode(b'{"u":999,"v":1,"e":9999999999}').decode()
    _assert_unauthorized(
        anon.post(STS, sts_body(f"upk_{forged_payload}:{stamp}:{signature}")), "bad signature"
    )
    _assert_unauthorized(anon.post(STS, sts_body("psk_notanuploadkey")), "malformed")


def test_keys_signed_with_another_secret_are_refused(anon, owner, settings):
    settings.UPLOAD_TOKEN_SECRET = "x" * 40
    key, _ = tokens.upload_key_issue(user_id=owner.pk, version=1, ttl=600)
    settings.UPLOAD_TOKEN_SECRET = "y" * 40
    _assert_unauthorized(anon.post(STS, sts_body(key)), "bad signature")


def test_expired_keys_are_refused(anon, owner):
    key, _ = tokens.upload_key_issue(user_id=owner.pk, version=1, ttl=-1)
    _assert_unauthorized(anon.post(STS, sts_body(key)), "expired")


def test_revoked_keys_are_refused_and_new_ones_work(anon, owner, owner_client, upload_key):
    old = upload_key(owner)
    response = owner_client.post("/api/media/v1/upload-key/revoke", {})
    assert response.json() == {"userId": owner.pk, "keyVersion": 2}
    _assert_unauthorized(anon.post(STS, sts_body(old)), "revoked")
    fresh = upload_key(owner)
    assert tokens.upload_key_read(fresh).version == 2
    assert anon.post(STS, sts_body(fresh)).status_code == 200
    assert owner_client.post("/api/media/v1/upload-key/revoke", {}).json()["keyVersion"] == 3
    assert UploadKeyVersion.objects.get(user=owner).version == 3


def test_revoking_someone_else_needs_staff(owner_client, teammate, staff_client):
    assert (
        owner_client.post("/api/media/v1/upload-key/revoke", {"userId": teammate.pk}).status_code
        == 403
    )
    assert not UploadKeyVersion.objects.exists()
    response = staff_client.post("/api/media/v1/upload-key/revoke", {"userId": teammate.pk})
    assert response.json() == {"userId": teammate.pk, "keyVersion": 2}


def test_keys_of_deactivated_users_are_refused(anon, owner, upload_key):
    key = upload_key(owner)
    owner.is_active = False
    owner.save()
    _assert_unauthorized(anon.post(STS, sts_body(key)), "not active")


def test_complete_with_the_upload_key_and_no_bearer(anon, owner, upload_key):
    key = upload_key(owner)
    data = png_bytes()
    grant = anon.post(STS, sts_body(key, fileSize=len(data))).json()
    put = anon.generic(
        "PUT", grant["uploadUrl"].split("127.0.0.1:8000")[1], data, content_type="image/png"
    )
    assert put.status_code == 200, put.json()
    assert (
        anon.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]}).json()["code"]
        == "MEDIA_UPLOAD_UNAUTHORIZED"
    )
    done = anon.post("/api/media/v1/complete", {"objectKey": grant["objectKey"], "uploadKey": key})
    assert done.status_code == 200, done.json()
    assert done.json()["status"] == "uploaded"
    assert MediaObject.objects.get().status == MediaStatus.UPLOADED
