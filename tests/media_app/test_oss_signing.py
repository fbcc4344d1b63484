"""OSS signing against the published algorithm (protocols.md §3.2–3.4) with fixed vectors.

The expected values were computed independently with ``openssl dgst -sha256 -mac HMAC`` chaining
kDate → kRegion → kService → kSigning, and ``base64`` over the compact policy JSON.
"""

import base64
import json
from datetime import UTC, datetime

import pytest

from media_app.storage import oss_signing

SECRET = "podi-test-secret"
VECTOR_SIGNING_KEY = "f247b1f0b09f0eab2110a578b806c1e78ccd1ef71e9e4900a269676b2a2e3344"
VECTOR_POLICY_JSON = (
    '{"expiration":"2026-11-23T12:15:00.000Z","conditions":[{"bucket":"podi-media"},'
    '["eq","$key","uploads/7/20261123/0123456789abcdef0123456789abcdef.png"],'
    '["content-length-range",1024,1024],["eq","$Content-Type","image/png"],'
    '["eq","$success_action_status","200"],{"x-oss-signature-version":"OSS4-HMAC-SHA256"},'
    '{"x-oss-credential":"LTAI5tTESTKEY/20261123/cn-hangzhou/oss/aliyun_v4_request"},'
    '{"x-oss-date":"20261123T120000Z"}]}'
)
VECTOR_POLICY_B64 = (
    "eyJleHBpcmF0aW9uIjoiMjAyNi0xMS0yM1QxMjoxNTowMC4wMDBaIiwiY29uZGl0aW9ucyI6W3siYnVja2V0Ijoi"
    "cG9kaS1tZWRpYSJ9LFsiZXEiLCIka2V5IiwidXBsb2Fkcy83LzIwMjYxMTIzLzAxMjM0NTY3ODlhYmNkZWYwMTIz"
    "NDU2Nzg5YWJjZGVmLnBuZyJdLFsiY29udGVudC1sZW5ndGgtcmFuZ2UiLDEwMjQsMTAyNF0sWyJlcSIsIiRDb250"
    "ZW50LVR5cGUiLCJpbWFnZS9wbmciXSxbImVxIiwiJHN1Y2Nlc3NfYWN0aW9uX3N0YXR1cyIsIjIwMCJdLHsieC1v"
    "c3Mtc2lnbmF0dXJlLXZlcnNpb24iOiJPU1M0LUhNQUMtU0hBMjU2In0seyJ4LW9zcy1jcmVkZW50aWFsIjoiTFRB"
    "STV0VEVTVEtFWS8yMDI2MTEyMy9jbi1oYW5nemhvdS9vc3MvYWxpeXVuX3Y0X3JlcXVlc3QifSx7Ingtb3NzLWRh"
    "dGUiOiIyMDI2MTEyM1QxMjAwMDBaIn1dfQ=="
)
VECTOR_SIGNATURE = "053d81d43b3db37f2896f218edd9d61c71ea35a9a570206b4e75096210eeba91"
OBJECT_KEY = "uploads/7/20261123/0123456789abcdef0123456789abcdef.png"


def test_signing_key_chain_matches_the_vector():
    key = oss_signing.v4_signing_key(SECRET, "20261123", "cn-hangzhou")
    assert key.hex() == VECTOR_SIGNING_KEY


def test_policy_signature_matches_the_vector():
    assert base64.b64encode(VECTOR_POLICY_JSON.encode()).decode() == VECTOR_POLICY_B64
    signature = oss_signing.v4_sign_policy(
        secret=SECRET, policy_b64=VECTOR_POLICY_B64, day="20261123", region="cn-hangzhou"
    )
    assert signature == VECTOR_SIGNATURE


def test_post_object_form_is_the_vector():
    fields, policy = oss_signing.post_object_fields(
        access_key_id="LTAI5tTESTKEY",
        access_key_secret=SECRET,
        bucket="podi-media",
        region="cn-hangzhou",
        object_key=OBJECT_KEY,
        mime_type="image/png",
        size=1024,
        now=datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC),
        expires_at=datetime(2026, 11, 23, 12, 15, tzinfo=UTC),
    )
    assert policy == json.loads(VECTOR_POLICY_JSON)
    assert fields == {
        "key": OBJECT_KEY,
        "Content-Type": "image/png",
        "success_action_status": "200",
        "x-oss-signature-version": "OSS4-HMAC-SHA256",
        "x-oss-credential": "LTAI5tTESTKEY/20261123/cn-hangzhou/oss/aliyun_v4_request",
        "x-oss-date": "20261123T120000Z",
        "policy": VECTOR_POLICY_B64,
        "x-oss-signature": VECTOR_SIGNATURE,
    }
    assert SECRET not in json.dumps(fields)


def test_sts_form_carries_the_security_token_in_fields_and_policy():
    fields, policy = oss_signing.post_object_fields(
        access_key_id="STS.tmp",
        access_key_secret="tmp-secret",
        security_token="CAIS-token",
        bucket="b",
        region="cn-shanghai",
        object_key="uploads/1/x.png",
        mime_type="image/png",
        size=10,
        now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        expires_at=datetime(2026, 1, 2, 4, 4, 5, tzinfo=UTC),
        callback="Y2I=",
    )
    assert fields["x-oss-security-token"] == "CAIS-token"
    assert fields["callback"] == "Y2I="
    assert fields["x-oss-credential"] == "STS.tmp/20260102/cn-shanghai/oss/aliyun_v4_request"
    assert {"x-oss-security-token": "CAIS-token"} in policy["conditions"]
    assert policy["expiration"] == "2026-01-02T04:04:05.000Z"
    assert fields["x-oss-signature"] == oss_signing.v4_sign_policy(
        secret="tmp-secret", policy_b64=fields["policy"], day="20260102", region="cn-shanghai"
    )


def test_region_accepts_the_seed_form():
    assert oss_signing.region_id("oss-cn-hangzhou") == "cn-hangzhou"
    assert oss_signing.region_id("cn-hangzhou") == "cn-hangzhou"


def test_session_policy_limits_to_the_user_prefix():
    text = oss_signing.session_policy(bucket="podi-media", prefix="uploads/7/")
    assert text == (
        '{"Version":"1","Statement":[{"Effect":"Allow","Action":["oss:PutObject",'
        '"oss:InitiateMultipartUpload","oss:UploadPart","oss:CompleteMultipartUpload",'
        '"oss:AbortMultipartUpload","oss:ListParts"],'
        '"Resource":["acs:oss:*:*:podi-media/uploads/7/*"]}]}'
    )
    assert len(text) <= 2048
    assert oss_signing.session_policy(bucket="b", prefix="test/12") == text.replace(
        "podi-media/uploads/7/*", "b/test/12/*"
    )


def test_callback_param_asks_for_the_facts_we_check():
    document = json.loads(base64.b64decode(oss_signing.callback_param("https://p.example/cb")))
    assert document == {
        "callbackUrl": "https://p.example/cb",
        "callbackBody": (
            "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&mimeType=${mimeType}"
            "&height=${imageInfo.height}&width=${imageInfo.width}"
        ),
        "callbackBodyType": "application/x-www-form-urlencoded",
    }


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://gosspublic.alicdn.com/callback_pub_key_v1.pem", True),
        ("http://gosspublic.alicdn.com/callback_pub_key_v1.pem", True),
        ("https://GOSSPUBLIC.alicdn.com/k.pem", True),
        ("https://gosspublic.alicdn.com.evil.example/k.pem", False),
        ("https://gosspublic.alicdn.com@evil.example/k.pem", False),
        ("https://evil.example/gosspublic.alicdn.com/k.pem", False),
        ("ftp://gosspublic.alicdn.com/k.pem", False),
        ("file:///etc/passwd", False),
        ("https://gosspublic.alicdn.com:8443/k.pem", False),
        ("https://127.0.0.1:9/k.pem", False),
        ("http://127.0.0.1:4000/k.pem", True),
        ("http://127.0.0.1:4001/k.pem", False),
        ("https://[::1/k.pem", False),
    ],
)
def test_public_key_hosts_are_allow_listed(url, allowed):
    hosts = ["gosspublic.alicdn.com", "127.0.0.1:4000"]
    assert oss_signing.pubkey_url_allowed(url, hosts) is allowed


def test_string_to_sign_is_decoded_path_query_newline_body():
    assert (
        oss_signing.callback_string_to_sign(
            path="/api/media/v1/oss%2Dcallback", query="a=1&b=%20", body=b"x=1"
        )
        == b"/api/media/v1/oss-callback?a=1&b=%20\nx=1"
    )
    assert oss_signing.callback_string_to_sign(path="/cb", query="", body=b"") == b"/cb\n"
