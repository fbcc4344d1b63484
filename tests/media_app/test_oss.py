"""OSS backend: STS AssumeRole (through the SDK, against a loopback STS and a closed port),
PostObject grants, storage through oss2 (moto stands in for the bucket), signed URLs, and the
upload callback's RSA verification with a key served from a loopback "public key" host."""

import base64
import hashlib
import io
import json
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from media_app.models import MediaObject, MediaStatus
from media_app.services import media_open, media_store_output, signed_download_url
from media_app.storage import get_backend, oss_signing
from media_app.storage.oss import assume_role_request
from tests.media_app.conftest import OSS_AK, OSS_SK, closed_port, png_bytes
from tests.media_app.servers import PubKeyServer, StsServer

pytestmark = pytest.mark.django_db

DATA = png_bytes(9, 6)
CALLBACK = "/api/media/v1/oss-callback"


def sts(anon, key, data=DATA, **extra):
    body = {"uploadKey": key, "fileName": "p.png", "mimeType": "image/png", "fileSize": len(data)}
    return anon.post("/api/media/v1/sts", {**body, **extra})


# --- Grants without a role: a PostObject form signed with the long-term key -------------------


def test_post_object_grant_without_a_role(anon, owner, upload_key, oss_storage, moto_server):
    response = sts(anon, upload_key(owner))
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["provider"] == "oss"
    assert body["isTemporary"] is False
    assert "ossCredentials" not in body
    assert (body["bucket"], body["region"], body["method"]) == (
        oss_storage,
        "oss-cn-hangzhou",
        "POST",
    )
    assert body["url"] == f"{moto_server}/{oss_storage}"
    fields = body["fields"]
    assert fields["key"] == body["objectKey"]
    assert fields["x-oss-credential"].startswith(f"{OSS_AK}/")
    assert fields["x-oss-credential"].endswith("/cn-hangzhou/oss/aliyun_v4_request")
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert ["eq", "$key", body["objectKey"]] in policy["conditions"]
    assert ["content-length-range", len(DATA), len(DATA)] in policy["conditions"]
    assert ["eq", "$Content-Type", "image/png"] in policy["conditions"]
    assert {"bucket": oss_storage} in policy["conditions"]
    day = fields["x-oss-date"][:8]
    assert fields["x-oss-signature"] == oss_signing.v4_sign_policy(
        secret=OSS_SK, policy_b64=fields["policy"], day=day, region="cn-hangzhou"
    )
    callback = json.loads(base64.b64decode(fields["callback"]))
    assert callback["callbackUrl"] == "https://podi.example.com/api/media/v1/oss-callback"
    assert OSS_SK not in response.content.decode()


def test_post_object_upload_then_complete(
    anon, owner, owner_client, upload_key, oss_storage, s3_client
):
    """The PostObject form posted to the bucket (moto), then completed through oss2's HEAD."""
    grant = sts(anon, upload_key(owner)).json()
    uploaded = httpx.post(
        grant["url"], data=grant["fields"], files={"file": ("p.png", DATA, "image/png")}, timeout=10
    )
    assert uploaded.status_code in (200, 204), uploaded.text
    done = owner_client.post("/api/media/v1/complete", {"objectKey": grant["objectKey"]})
    assert done.status_code == 200, done.json()
    assert (done.json()["status"], done.json()["width"], done.json()["height"]) == (
        "uploaded",
        9,
        6,
    )
    signed = owner_client.post("/api/media/v1/signed-download", {"objectKey": grant["objectKey"]})
    url = signed.json()["url"]
    query = parse_qs(urlsplit(url).query)
    assert query["x-oss-expires"] == ["600"]
    assert query["x-oss-signature-version"] == ["OSS4-HMAC-SHA256"]
    assert query["x-oss-credential"][0].startswith(f"{OSS_AK}/")
    # moto cannot check an OSS signature; with the object made public it shows the URL's target.
    s3_client.put_object_acl(Bucket=oss_storage, Key=grant["objectKey"], ACL="public-read")
    assert httpx.get(url, timeout=10).content == DATA


def test_public_domain_signs_browser_urls(oss_storage, settings, owner):
    settings.OSS_PUBLIC_DOMAIN = "https://img.example.com"
    media = media_store_output(
        user_id=owner.pk, task_id="t", filename="a.txt", stream=io.BytesIO(b"a")
    )
    url, _ = signed_download_url(object_key=media.object_key, ttl=90)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https", "img.example.com", f"/results/{owner.pk}/t/a.txt",
    )  # fmt: skip
    assert parse_qs(parts.query)["x-oss-expires"] == ["90"]
    assert get_backend().upload_host == "https://img.example.com"


def test_outputs_and_reads_through_oss2(owner, oss_storage, s3_client):
    data = b"x" * 700_000
    media = media_store_output(
        user_id=owner.pk, task_id="tsk_o", filename="v.bin", stream=io.BytesIO(data)
    )
    assert (media.backend, media.bucket, media.size) == ("oss", oss_storage, len(data))
    assert media.sha256 == hashlib.sha256(data).hexdigest()
    stored = s3_client.get_object(Bucket=oss_storage, Key=media.object_key)
    assert stored["Body"].read() == data
    with media_open(object_key=media.object_key) as stream:
        assert stream.read(5) == b"xxxxx"
    backend = get_backend()
    assert backend.stat(media.object_key).size == len(data)
    assert backend.stat("results/none") is None
    assert backend.read_head(media.object_key, 4) == b"xxxx"
    assert backend.storage.exists(media.object_key)
    backend.delete(media.object_key)
    assert backend.stat(media.object_key) is None


# --- STS ---------------------------------------------------------------------------------------


@pytest.fixture
def sts_server(settings, oss_storage):
    server = StsServer().start()
    settings.OSS_ROLE_ARN = "acs:ram::1234567890:role/podi-upload"
    settings.OSS_STS_ENDPOINT = server.url
    yield server
    server.stop()


def test_assume_role_request_is_built_by_the_sdk(oss_storage, settings):
    settings.OSS_ROLE_ARN = "acs:ram::1:role/r"
    settings.MEDIA_UPLOAD_PREFIX = "test"
    request = assume_role_request(user_id=7, duration=900)
    request.validate()
    assert request.to_map() == {
        "RoleArn": "acs:ram::1:role/r",
        "RoleSessionName": "podi-user-7",
        "Policy": oss_signing.session_policy(bucket=oss_storage, prefix="test/7/"),
        "DurationSeconds": 900,
    }


def test_sts_returns_temporary_credentials_limited_to_the_user(
    anon, owner, upload_key, sts_server, oss_storage
):
    response = sts(anon, upload_key(owner))
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["isTemporary"] is True
    assert body["expireIn"] == 900
    assert body["ossCredentials"] == {
        "accessKeyId": "STS.tmpkey1",
        "accessKeySecret": "tmp-secret-1",
        "securityToken": "CAIS-token-1",
        "expiration": "2099-01-01T00:00:00Z",
        "bucket": oss_storage,
        "region": "oss-cn-hangzhou",
        "endpoint": get_backend().oss.endpoint,
        "rootPrefix": "uploads",
    }
    fields = body["fields"]
    assert fields["x-oss-credential"].startswith("STS.tmpkey1/")
    assert fields["x-oss-security-token"] == "CAIS-token-1"
    assert fields["x-oss-signature"] == oss_signing.v4_sign_policy(
        secret="tmp-secret-1",
        policy_b64=fields["policy"],
        day=fields["x-oss-date"][:8],
        region="cn-hangzhou",
    )
    text = response.content.decode()
    assert OSS_SK not in text and OSS_AK not in text

    (request,) = sts_server.requests
    assert request.headers["x-acs-action"] == "AssumeRole"
    assert request.headers["x-acs-version"] == "2015-04-01"
    assert request.headers["Authorization"].startswith(f"ACS3-HMAC-SHA256 Credential={OSS_AK},")
    assert OSS_SK not in json.dumps(request.headers) + json.dumps(request.query)
    assert request.query == {
        "RoleArn": "acs:ram::1234567890:role/podi-upload",
        "RoleSessionName": f"podi-user-{owner.pk}",
        "DurationSeconds": "900",
        "Policy": oss_signing.session_policy(bucket=oss_storage, prefix=f"uploads/{owner.pk}/"),
    }
    policy = json.loads(request.query["Policy"])
    assert policy["Statement"][0]["Resource"] == [f"acs:oss:*:*:{oss_storage}/uploads/{owner.pk}/*"]

    again = sts(anon, upload_key(owner))
    assert again.json()["ossCredentials"]["accessKeyId"] == "STS.tmpkey1"
    assert len(sts_server.requests) == 1  # cached until near expiry


def test_sts_credentials_are_per_user(anon, owner, teammate, upload_key, sts_server):
    sts(anon, upload_key(owner))
    sts(anon, upload_key(teammate))
    sessions = [request.query["RoleSessionName"] for request in sts_server.requests]
    assert sessions == [f"podi-user-{owner.pk}", f"podi-user-{teammate.pk}"]


def test_sts_unreachable_is_503_and_stores_nothing(anon, owner, upload_key, oss_storage, settings):
    settings.OSS_ROLE_ARN = "acs:ram::1:role/r"
    settings.OSS_STS_ENDPOINT = f"http://127.0.0.1:{closed_port()}"
    response = sts(anon, upload_key(owner))
    assert response.status_code == 503
    assert response.json() == {
        "code": "MEDIA_STS_UNAVAILABLE",
        "message": "Temporary upload credentials could not be issued; retry later.",
        "details": {},
    }
    assert not MediaObject.objects.exists()


def test_sts_refusal_is_503_without_falling_back_to_long_term_keys(
    anon, owner, upload_key, sts_server
):
    sts_server.fail_with = (403, {"Code": "NoPermission", "Message": "You are not authorized"})
    response = sts(anon, upload_key(owner))
    assert response.status_code == 503
    assert response.json()["code"] == "MEDIA_STS_UNAVAILABLE"
    assert OSS_SK not in response.content.decode()
    assert not MediaObject.objects.exists()


# --- Upload callback ---------------------------------------------------------------------------


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - fast; OSS uses 512


def _pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def oss_key():
    return _rsa_key()


@pytest.fixture
def pubkey_server(oss_key, settings, oss_storage):
    server = PubKeyServer(_pem(oss_key)).start()
    settings.OSS_CALLBACK_PUBKEY_HOSTS = ["gosspublic.alicdn.com", f"127.0.0.1:{server.port}"]
    yield server
    server.stop()


@pytest.fixture
def pending(anon, owner, upload_key, oss_storage):
    response = sts(anon, upload_key(owner))
    assert response.status_code == 200
    return MediaObject.objects.get(object_key=response.json()["objectKey"])


def callback_body(media, *, bucket=None, size=None, mime="image/png", key=None) -> bytes:
    values = {
        "bucket": bucket or media.bucket,
        "object": key or media.object_key,
        "etag": "D41D8CD98F00B204E9800998ECF8427E",
        "size": str(media.size if size is None else size),
        "mimeType": mime,
        "height": "6",
        "width": "9",
    }
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in values.items()).encode()


def signed_headers(key, key_url: str, body: bytes, path=CALLBACK, query="") -> dict:
    message = oss_signing.callback_string_to_sign(path=path, query=query, body=body)
    signature = key.sign(message, padding.PKCS1v15(), hashes.MD5())  # noqa: S303 - as OSS signs
    return {
        "HTTP_AUTHORIZATION": base64.b64encode(signature).decode(),
        "HTTP_X_OSS_PUB_KEY_URL": base64.b64encode(key_url.encode()).decode(),
    }


def post_callback(client, body: bytes, headers: dict, path=CALLBACK):
    return client.generic(
        "POST", path, body, content_type="application/x-www-form-urlencoded", **headers
    )


def _refused(response, fragment):
    assert response.status_code == 400, response.json()
    assert response.json()["code"] == "MEDIA_CALLBACK_INVALID"
    assert fragment in response.json()["message"]


def test_a_signed_callback_records_the_upload(anon, pending, oss_key, pubkey_server):
    body = callback_body(pending)
    response = post_callback(anon, body, signed_headers(oss_key, pubkey_server.key_url, body))
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "objectKey": pending.object_key,
        "status": "uploaded",
        "size": len(DATA),
        "mimeType": "image/png",
        "width": 9,
        "height": 6,
    }
    pending.refresh_from_db()
    assert (pending.status, pending.width, pending.height) == ("uploaded", 9, 6)
    assert len(pubkey_server.requests) == 1


def test_a_replayed_callback_is_refused(anon, pending, oss_key, pubkey_server):
    body = callback_body(pending)
    headers = signed_headers(oss_key, pubkey_server.key_url, body)
    assert post_callback(anon, body, headers).status_code == 200
    pending.refresh_from_db()
    first = (pending.status, pending.uploaded_at, pending.updated_at)
    _refused(post_callback(anon, body, headers), "replay")
    pending.refresh_from_db()
    assert (pending.status, pending.uploaded_at, pending.updated_at) == first
    assert len(pubkey_server.requests) == 1  # the key was cached


def test_a_forged_signature_is_refused(anon, pending, pubkey_server):
    body = callback_body(pending)
    forged = signed_headers(_rsa_key(), pubkey_server.key_url, body)
    _refused(post_callback(anon, body, forged), "signature does not match")
    garbage = dict(forged, HTTP_AUTHORIZATION="not base64!!")
    _refused(post_callback(anon, body, garbage), "not base64")
    _refused(post_callback(anon, body, {}), "header is missing")
    pending.refresh_from_db()
    assert pending.status == MediaStatus.PENDING


def test_a_key_from_another_host_is_refused_without_fetching_it(anon, pending, settings):
    attacker = _rsa_key()
    evil = PubKeyServer(_pem(attacker)).start()
    try:
        body = callback_body(pending)
        _refused(
            post_callback(anon, body, signed_headers(attacker, evil.key_url, body)), "allow-list"
        )
        lookalike = f"https://gosspublic.alicdn.com@127.0.0.1:{evil.port}/callback_pub_key_v1.pem"
        _refused(post_callback(anon, body, signed_headers(attacker, lookalike, body)), "allow-list")
        assert evil.requests == []
    finally:
        evil.stop()
    pending.refresh_from_db()
    assert pending.status == MediaStatus.PENDING


def test_a_tampered_body_or_query_is_refused(anon, pending, oss_key, pubkey_server):
    body = callback_body(pending)
    headers = signed_headers(oss_key, pubkey_server.key_url, body)
    tampered = body.replace(b"width=9", b"width=99")
    _refused(post_callback(anon, tampered, headers), "signature does not match")
    _refused(post_callback(anon, body, headers, path=CALLBACK + "?extra=1"), "signature")
    pending.refresh_from_db()
    assert pending.status == MediaStatus.PENDING


def test_a_signed_query_string_is_part_of_the_message(anon, pending, oss_key, pubkey_server):
    body = callback_body(pending)
    headers = signed_headers(oss_key, pubkey_server.key_url, body, query="tenant=7")
    response = post_callback(anon, body, headers, path=CALLBACK + "?tenant=7")
    assert response.status_code == 200, response.json()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"bucket": "another-bucket"}, "another bucket"),
        ({"key": "results/1/t/x.png"}, "outside the prefix"),
        ({"key": "uploads/999/20261123/abc.png"}, "no upload was granted"),
    ],
)
def test_signed_callbacks_about_other_objects_are_refused(
    anon, pending, oss_key, pubkey_server, overrides, fragment
):
    body = callback_body(pending, **overrides)
    _refused(
        post_callback(anon, body, signed_headers(oss_key, pubkey_server.key_url, body)), fragment
    )
    pending.refresh_from_db()
    assert pending.status == MediaStatus.PENDING


@pytest.mark.parametrize(("size", "mime"), [(len(DATA) + 1, "image/png"), (len(DATA), "text/html")])
def test_a_signed_callback_with_another_size_or_type_deletes_the_object(
    anon, pending, oss_key, pubkey_server, s3_client, oss_storage, size, mime
):
    s3_client.put_object(Bucket=oss_storage, Key=pending.object_key, Body=b"x" * size)
    body = callback_body(pending, size=size, mime=mime)
    _refused(
        post_callback(anon, body, signed_headers(oss_key, pubkey_server.key_url, body)),
        "differs from the declared upload",
    )
    pending.refresh_from_db()
    assert pending.status == MediaStatus.DELETED
    assert s3_client.list_objects_v2(Bucket=oss_storage).get("KeyCount", 0) == 0


def test_callbacks_are_refused_when_oss_is_not_the_backend(
    anon, pending, oss_key, pubkey_server, settings
):
    settings.STORAGE_BACKEND = "local"
    body = callback_body(pending)
    _refused(
        post_callback(anon, body, signed_headers(oss_key, pubkey_server.key_url, body)),
        "OSS is not the storage backend",
    )


def test_a_public_key_url_that_is_not_a_key_is_refused(anon, pending, settings):
    server = PubKeyServer(b"<html>not a key</html>").start()
    try:
        settings.OSS_CALLBACK_PUBKEY_HOSTS = [f"127.0.0.1:{server.port}"]
        body = callback_body(pending)
        _refused(
            post_callback(anon, body, signed_headers(_rsa_key(), server.key_url, body)),
            "not a PEM public key",
        )
    finally:
        server.stop()
