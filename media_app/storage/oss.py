"""Aliyun OSS through oss2 (V4 signing): a Django ``Storage``, the media backend, and STS.

Browsers get a PostObject form (policy fixing key, size and type, signed here) and, when
``OSS_ROLE_ARN`` is set, temporary STS credentials whose session policy only allows writing under
``<rootPrefix>/<userId>/``. The long-term AccessKey never leaves the server.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO
from urllib.parse import urlsplit

import oss2
from alibabacloud_sts20150401 import models as sts_models
from alibabacloud_sts20150401.client import Client
from alibabacloud_tea_openapi.utils_models import Config
from darabonba.runtime import RuntimeOptions
from django.conf import settings
from django.core.cache import cache
from django.core.files.base import File
from django.core.files.storage import Storage
from django.utils import timezone
from django.utils.deconstruct import deconstructible
from Tea.exceptions import TeaException

from media_app.error_codes import MEDIA_STS_UNAVAILABLE
from media_app.paths import upload_user_prefix
from media_app.storage import oss_signing
from media_app.storage.base import ListedObject, MediaBackend, ObjectStat, storage_error
from podi.errors import AppError

logger = logging.getLogger("media_app.oss")

STS_CACHE_MARGIN = 300  # seconds before Expiration when cached STS credentials are renewed


def endpoint_url(endpoint: str) -> str:
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if "://" in endpoint else f"https://{endpoint}"


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def bucket_base_url(endpoint: str, bucket: str) -> str:
    """Where a browser POSTs a PostObject form: the bucket's virtual host (path style for IPs)."""
    parts = urlsplit(endpoint_url(endpoint))
    if _is_ip_or_localhost(parts.hostname or ""):
        return f"{parts.scheme}://{parts.netloc}/{bucket}"
    return f"{parts.scheme}://{bucket}.{parts.netloc}"


def _auth() -> oss2.AuthV4:
    return oss2.AuthV4(settings.OSS_ACCESS_KEY, settings.OSS_SECRET_KEY)


def oss_bucket() -> oss2.Bucket:
    return oss2.Bucket(
        _auth(),
        endpoint_url(settings.OSS_ENDPOINT),
        settings.OSS_BUCKET,
        connect_timeout=settings.OSS_TIMEOUT,
        region=oss_signing.region_id(settings.OSS_REGION),
    )


def public_bucket() -> oss2.Bucket:
    """The bucket as browsers reach it: through OSS_PUBLIC_DOMAIN (a CNAME) when set."""
    if not settings.OSS_PUBLIC_DOMAIN:
        return oss_bucket()
    return oss2.Bucket(
        _auth(),
        endpoint_url(settings.OSS_PUBLIC_DOMAIN),
        settings.OSS_BUCKET,
        is_cname=True,
        connect_timeout=settings.OSS_TIMEOUT,
        region=oss_signing.region_id(settings.OSS_REGION),
    )


class _ReadOnly:
    """Hides size hints so oss2 streams the body (chunked) instead of measuring it first."""

    def __init__(self, stream):
        self._stream = stream

    def read(self, size=-1):
        return self._stream.read(size if size is not None else -1)


@deconstructible
class OssStorage(Storage):
    """A Django storage on an OSS bucket (the STORAGES default when STORAGE_BACKEND=oss)."""

    def __init__(self):
        self.oss_bucket = oss_bucket()

    def _save(self, name, content):
        headers = {
            "Content-Type": getattr(content, "content_type", None) or "application/octet-stream"
        }
        self.oss_bucket.put_object(name, _ReadOnly(content), headers=headers)
        return name

    def _open(self, name, mode="rb"):
        return File(self.oss_bucket.get_object(name), name=name)

    def get_available_name(self, name, max_length=None):
        return name  # overwrite, like S3Storage(file_overwrite=True)

    def exists(self, name):
        return self.oss_bucket.object_exists(name)

    def delete(self, name):
        self.oss_bucket.delete_object(name)

    def size(self, name):
        return self.oss_bucket.head_object(name).content_length

    def url(self, name):
        return public_bucket().sign_url("GET", name, 3600, slash_safe=True)

    def listdir(self, path):
        prefix = f"{path.rstrip('/')}/" if path else ""
        directories, files = [], []
        for item in oss2.ObjectIterator(self.oss_bucket, prefix=prefix, delimiter="/"):
            name = item.key[len(prefix) :]
            if item.is_prefix():
                directories.append(name.rstrip("/"))
            elif name:
                files.append(name)
        return directories, files


# --- STS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StsCredentials:
    access_key_id: str
    access_key_secret: str
    security_token: str
    expiration: str  # ISO 8601 UTC, as STS gave it

    @property
    def expires_at(self) -> datetime:
        return datetime.strptime(self.expiration, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _sts_endpoint() -> tuple[str, str]:
    """(protocol, host[:port]) from OSS_STS_ENDPOINT (a host, or a URL for tests and proxies)."""
    value = settings.OSS_STS_ENDPOINT.strip().rstrip("/")
    if "://" in value:
        parts = urlsplit(value)
        return parts.scheme, parts.netloc
    return "https", value


def sts_client():
    protocol, host = _sts_endpoint()
    timeout_ms = settings.OSS_TIMEOUT * 1000
    return Client(
        Config(
            access_key_id=settings.OSS_ACCESS_KEY,
            access_key_secret=settings.OSS_SECRET_KEY,
            endpoint=host,
            protocol=protocol,
            region_id=oss_signing.region_id(settings.OSS_REGION),
            connect_timeout=timeout_ms,
            read_timeout=timeout_ms,
        )
    )


def assume_role_request(*, user_id: int, duration: int):
    """The SDK's AssumeRoleRequest for one user: role, session name, session policy, duration."""

    return sts_models.AssumeRoleRequest(
        role_arn=settings.OSS_ROLE_ARN,
        role_session_name=f"podi-user-{user_id}",
        policy=oss_signing.session_policy(
            bucket=settings.OSS_BUCKET, prefix=upload_user_prefix(user_id)
        ),
        duration_seconds=duration,
    )


def assume_role(*, user_id: int) -> StsCredentials:
    """Temporary credentials limited to ``rootPrefix/userId/*``, cached until near expiry.

    Any failure (unreachable endpoint, refusal, malformed answer) is 503 ``MEDIA_STS_UNAVAILABLE``;
    there is no fallback to the long-term key.
    """

    duration = settings.OSS_STS_DURATION
    cache_key = f"media:oss-sts:{settings.OSS_BUCKET}:{settings.MEDIA_UPLOAD_PREFIX}:{user_id}"
    cached = cache.get(cache_key)
    if cached:
        return StsCredentials(**cached)
    timeout_ms = settings.OSS_TIMEOUT * 1000
    runtime = RuntimeOptions(autoretry=False, connect_timeout=timeout_ms, read_timeout=timeout_ms)
    try:
        response = sts_client().assume_role_with_options(
            assume_role_request(user_id=user_id, duration=duration), runtime
        )
        body = response.body.credentials
        credentials = StsCredentials(
            access_key_id=body.access_key_id,
            access_key_secret=body.access_key_secret,
            security_token=body.security_token,
            expiration=body.expiration,
        )
        remaining = (credentials.expires_at - timezone.now()).total_seconds()
    except (TeaException, OSError, AttributeError, TypeError, ValueError) as exc:
        logger.warning("STS AssumeRole failed: %s: %s", type(exc).__name__, str(exc)[:300])
        raise AppError(MEDIA_STS_UNAVAILABLE) from exc
    if remaining > STS_CACHE_MARGIN + 60:
        cache.set(cache_key, credentials.__dict__, int(remaining - STS_CACHE_MARGIN))
    return credentials


# --- Backend ---------------------------------------------------------------------------------

_NOT_FOUND = (oss2.exceptions.NoSuchKey, oss2.exceptions.NotFound)
_OSS_ERRORS = (oss2.exceptions.OssError, OSError)


class OssBackend(MediaBackend):
    name = "oss"

    def __init__(self):
        self.storage = OssStorage()
        self.bucket = settings.OSS_BUCKET
        self.oss = self.storage.oss_bucket
        self.region = oss_signing.region_id(settings.OSS_REGION)

    @property
    def upload_host(self) -> str:
        if settings.OSS_PUBLIC_DOMAIN:
            return endpoint_url(settings.OSS_PUBLIC_DOMAIN)
        return bucket_base_url(settings.OSS_ENDPOINT, self.bucket)

    def upload_credentials(self, *, object_key, mime_type, size, user_id, ttl) -> dict:
        sts = assume_role(user_id=user_id) if settings.OSS_ROLE_ARN else None
        now = timezone.now()
        expires_at = now + timedelta(seconds=ttl)
        if sts is not None:
            expires_at = min(expires_at, sts.expires_at)
        callback = oss_signing.callback_param(settings.OSS_CALLBACK_URL)
        fields, _ = oss_signing.post_object_fields(
            access_key_id=sts.access_key_id if sts else settings.OSS_ACCESS_KEY,
            access_key_secret=sts.access_key_secret if sts else settings.OSS_SECRET_KEY,
            security_token=sts.security_token if sts else None,
            bucket=self.bucket,
            region=self.region,
            object_key=object_key,
            mime_type=mime_type,
            size=size,
            now=now,
            expires_at=expires_at,
            callback=callback,
        )
        result = {
            "bucket": self.bucket,
            "region": f"oss-{self.region}",
            "endpoint": endpoint_url(settings.OSS_ENDPOINT),
            "url": self.upload_host,
            "method": "POST",
            "fields": fields,
            "callback": callback,
            "isTemporary": sts is not None,
        }
        if sts is not None:
            result["ossCredentials"] = {
                "accessKeyId": sts.access_key_id,
                "accessKeySecret": sts.access_key_secret,
                "securityToken": sts.security_token,
                "expiration": sts.expiration,
                "bucket": self.bucket,
                "region": f"oss-{self.region}",
                "endpoint": endpoint_url(settings.OSS_ENDPOINT),
                "rootPrefix": settings.MEDIA_UPLOAD_PREFIX,
            }
        return result

    def stat(self, object_key: str) -> ObjectStat | None:
        try:
            head = self.oss.head_object(object_key)
        except _NOT_FOUND:
            return None
        except _OSS_ERRORS as exc:
            raise storage_error(exc, "stat") from exc
        return ObjectStat(
            size=int(head.content_length or 0),
            content_type=head.content_type or "",
            etag=str(head.etag or ""),
        )

    def signed_url(self, object_key: str, *, ttl: int) -> str:
        try:
            return public_bucket().sign_url("GET", object_key, ttl, slash_safe=True)
        except _OSS_ERRORS as exc:
            raise storage_error(exc, "presign-get") from exc

    def open(self, object_key: str) -> BinaryIO:
        try:
            return self.oss.get_object(object_key)
        except _OSS_ERRORS as exc:
            raise storage_error(exc, "open") from exc

    def read_head(self, object_key: str, length: int = 256 * 1024) -> bytes:
        try:
            result = self.oss.get_object(object_key, byte_range=(0, length - 1))
            try:
                return result.read(length)
            finally:
                result.close()
        except _OSS_ERRORS as exc:
            raise storage_error(exc, "read") from exc

    def delete(self, object_key: str) -> None:
        try:
            self.oss.delete_object(object_key)
        except _OSS_ERRORS as exc:
            raise storage_error(exc, "delete") from exc

    def list(self, prefix: str, *, limit: int = 1000) -> list[ListedObject]:
        found: list[ListedObject] = []
        try:
            for item in oss2.ObjectIterator(self.oss, prefix=prefix):
                found.append(
                    ListedObject(
                        key=item.key,
                        size=int(item.size),
                        modified=datetime.fromtimestamp(item.last_modified, tz=UTC),
                    )
                )
                if len(found) >= limit:
                    break
        except _OSS_ERRORS as exc:
            raise storage_error(exc, "list") from exc
        return found
