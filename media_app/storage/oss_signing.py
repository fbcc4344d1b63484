"""Aliyun OSS signing done by PODI itself (protocols.md §3.2–3.4).

* PostObject V4: the policy document, its base64 form and the ``x-oss-signature``
  (``hex(HMAC-SHA256(kSigning, base64(policy)))`` with the ``aliyun_v4`` key chain).
* The STS session policy limiting a role to ``<bucket>/<rootPrefix>/<userId>/*``.
* The upload callback: its ``callback`` parameter, and verification of the RSA (MD5withRSA)
  signature OSS puts on the callback request, with the public key fetched only from an
  allow-listed host and cached.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import httpx
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.core.cache import cache

logger = logging.getLogger("media_app.oss")

SIGNATURE_VERSION = "OSS4-HMAC-SHA256"
CALLBACK_BODY = (
    "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&mimeType=${mimeType}"
    "&height=${imageInfo.height}&width=${imageInfo.width}"
)
PUBKEY_CACHE_SECONDS = 24 * 3600
PUBKEY_MAX_BYTES = 16 * 1024
PUBKEY_FETCH_TIMEOUT = 3.0
_pubkey_memo: dict[str, tuple[rsa.RSAPublicKey, float]] = {}


def region_id(region: str) -> str:
    """``oss-cn-hangzhou`` (seed 000's form) → ``cn-hangzhou`` (what V4 signing needs)."""
    return region.strip().removeprefix("oss-")


def iso8601(moment: datetime) -> str:
    """``2026-11-23T12:00:00.000Z``: the form OSS wants for a policy's expiration."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# --- PostObject V4 -----------------------------------------------------------------------------


def v4_signing_key(secret: str, day: str, region: str) -> bytes:
    """kDate → kRegion → kService → kSigning, each an HMAC-SHA256 keyed by the previous one."""
    k_date = hmac.new(f"aliyun_v4{secret}".encode(), day.encode(), hashlib.sha256).digest()
    k_region = hmac.new(k_date, region.encode(), hashlib.sha256).digest()
    k_service = hmac.new(k_region, b"oss", hashlib.sha256).digest()
    return hmac.new(k_service, b"aliyun_v4_request", hashlib.sha256).digest()


def encode_policy(policy: dict) -> str:
    return base64.b64encode(
        json.dumps(policy, separators=(",", ":"), ensure_ascii=False).encode()
    ).decode()


def v4_sign_policy(*, secret: str, policy_b64: str, day: str, region: str) -> str:
    key = v4_signing_key(secret, day, region)
    return hmac.new(key, policy_b64.encode(), hashlib.sha256).hexdigest()


def post_object_fields(
    *,
    access_key_id: str,
    access_key_secret: str,
    bucket: str,
    region: str,
    object_key: str,
    mime_type: str,
    size: int,
    now: datetime,
    expires_at: datetime,
    security_token: str | None = None,
    callback: str | None = None,
) -> tuple[dict[str, str], dict]:
    """The PostObject form fields (``file`` goes last, after these) and the policy document.

    The policy fixes the bucket, the exact key, the exact size and the Content-Type, and repeats
    the V4 signing fields as OSS requires.
    """
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    credential = f"{access_key_id}/{day}/{region}/oss/aliyun_v4_request"
    conditions: list = [
        {"bucket": bucket},
        ["eq", "$key", object_key],
        ["content-length-range", size, size],
        ["eq", "$Content-Type", mime_type],
        ["eq", "$success_action_status", "200"],
        {"x-oss-signature-version": SIGNATURE_VERSION},
        {"x-oss-credential": credential},
        {"x-oss-date": stamp},
    ]
    if security_token:
        conditions.append({"x-oss-security-token": security_token})
    policy = {"expiration": iso8601(expires_at), "conditions": conditions}
    policy_b64 = encode_policy(policy)
    fields = {
        "key": object_key,
        "Content-Type": mime_type,
        "success_action_status": "200",
        "x-oss-signature-version": SIGNATURE_VERSION,
        "x-oss-credential": credential,
        "x-oss-date": stamp,
        "policy": policy_b64,
        "x-oss-signature": v4_sign_policy(
            secret=access_key_secret, policy_b64=policy_b64, day=day, region=region
        ),
    }
    if security_token:
        fields["x-oss-security-token"] = security_token
    if callback:
        fields["callback"] = callback
    return fields, policy


def callback_param(callback_url: str) -> str:
    """The base64 ``callback`` parameter: OSS POSTs the upload's facts to ``callback_url``."""
    document = {
        "callbackUrl": callback_url,
        "callbackBody": CALLBACK_BODY,
        "callbackBodyType": "application/x-www-form-urlencoded",
    }
    return base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()


# --- STS session policy ------------------------------------------------------------------------


def session_policy(*, bucket: str, prefix: str) -> str:
    """A RAM session policy allowing uploads (and multipart) under ``<bucket>/<prefix>*`` only."""
    if not prefix.endswith("/"):
        prefix += "/"
    document = {
        "Version": "1",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "oss:PutObject",
                    "oss:InitiateMultipartUpload",
                    "oss:UploadPart",
                    "oss:CompleteMultipartUpload",
                    "oss:AbortMultipartUpload",
                    "oss:ListParts",
                ],
                "Resource": [f"acs:oss:*:*:{bucket}/{prefix}*"],
            }
        ],
    }
    return json.dumps(document, separators=(",", ":"))


# --- Callback verification ---------------------------------------------------------------------


class CallbackRefused(Exception):
    """The callback is not provably from OSS; ``str(exc)`` says why (safe to return)."""


def pubkey_url_allowed(url: str, allowed_hosts: list[str]) -> bool:
    """True for an http(s) URL whose host (or host:port) is on the allow-list, nothing else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return False
    host = parts.hostname.lower()
    netloc = f"{host}:{port}" if port is not None else host
    allowed = {entry.strip().lower() for entry in allowed_hosts if entry.strip()}
    return netloc in allowed or (port is None and host in allowed)


def _load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CallbackRefused("the public key is not a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise CallbackRefused("the public key is not an RSA key")
    return key


def fetch_public_key(url: str) -> rsa.RSAPublicKey:
    """The PEM key at ``url`` (allow-listed by the caller), cached by URL in process and cache."""
    memo = _pubkey_memo.get(url)
    if memo is not None and memo[1] > time.monotonic():
        return memo[0]
    cache_key = "media:oss-pubkey:" + hashlib.sha256(url.encode()).hexdigest()
    pem = cache.get(cache_key)
    if pem is None:
        try:
            with httpx.Client(timeout=PUBKEY_FETCH_TIMEOUT, follow_redirects=False) as client:
                with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise CallbackRefused(f"the public key URL answered {response.status_code}")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > PUBKEY_MAX_BYTES:
                            raise CallbackRefused("the public key is too large")
        except httpx.HTTPError as exc:
            logger.warning("fetching the OSS callback public key failed: %s", exc)
            raise CallbackRefused("the public key could not be fetched") from exc
        pem = bytes(body)
        _load_public_key(pem)  # only a usable key is cached
        cache.set(cache_key, pem, PUBKEY_CACHE_SECONDS)
    key = _load_public_key(pem)
    _pubkey_memo[url] = (key, time.monotonic() + PUBKEY_CACHE_SECONDS)
    return key


def clear_public_key_cache() -> None:
    _pubkey_memo.clear()


def callback_string_to_sign(*, path: str, query: str, body: bytes) -> bytes:
    text = unquote(path)
    if query:
        text += "?" + query
    return text.encode() + b"\n" + body


def verify_callback(
    *,
    authorization: str | None,
    pubkey_url_b64: str | None,
    path: str,
    query: str,
    body: bytes,
    allowed_hosts: list[str],
) -> None:
    """Raise ``CallbackRefused`` unless OSS's RSA signature over path, query and body holds."""
    if not authorization or not pubkey_url_b64:
        raise CallbackRefused("the authorization or x-oss-pub-key-url header is missing")
    try:
        url = base64.b64decode(pubkey_url_b64, validate=True).decode("ascii")
        signature = base64.b64decode(authorization, validate=True)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CallbackRefused("the signature headers are not base64") from None
    if not pubkey_url_allowed(url, allowed_hosts):
        raise CallbackRefused("the public key URL is not on the allow-list")
    key = fetch_public_key(url)
    message = callback_string_to_sign(path=path, query=query, body=body)
    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.MD5())  # noqa: S303 - OSS's scheme
    except InvalidSignature:
        raise CallbackRefused("the signature does not match") from None
