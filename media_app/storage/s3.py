"""S3 and S3-compatible stores (MinIO, moto, OSS's S3 endpoint) through django-storages.

Browsers upload with a presigned POST whose policy fixes the key, the exact size and the
Content-Type; downloads are presigned GETs.
"""

from __future__ import annotations

from typing import BinaryIO

from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from storages.backends.s3 import S3Storage

from media_app.storage.base import ListedObject, MediaBackend, ObjectStat, storage_error


def s3_options() -> dict:
    """django-storages options from PODI's settings (protocols.md §3.7)."""
    return {
        "bucket_name": settings.S3_BUCKET,
        "access_key": settings.S3_ACCESS_KEY_ID,
        "secret_key": settings.S3_SECRET_ACCESS_KEY,
        "endpoint_url": settings.S3_ENDPOINT_URL,
        "region_name": settings.S3_REGION,
        "file_overwrite": True,
        "querystring_auth": True,
        "default_acl": None,
        "location": "",
        # Streams go up in 8 MiB parts, at most two in flight: memory stays bounded.
        "transfer_config": TransferConfig(
            multipart_threshold=8 * 1024 * 1024,
            multipart_chunksize=8 * 1024 * 1024,
            max_concurrency=2,
        ),
        # Config overrides addressing style and signature version, so both live in it. Checksums
        # only when required: OSS and several S3 clones refuse aws-chunked bodies.
        "client_config": Config(
            signature_version="s3v4",
            s3={"addressing_style": settings.S3_ADDRESSING_STYLE},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=10,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    }


class PodiS3Storage(S3Storage):
    """``S3Storage`` configured from PODI's S3_* settings (the STORAGES default for s3)."""

    def __init__(self, **overrides):
        super().__init__(**{**s3_options(), **overrides})


class S3Backend(MediaBackend):
    name = "s3"

    def __init__(self):
        self.storage = PodiS3Storage()
        self.bucket = settings.S3_BUCKET
        self.client = self.storage.connection.meta.client

    def upload_credentials(self, *, object_key, mime_type, size, user_id, ttl) -> dict:
        try:
            post = self.client.generate_presigned_post(
                Bucket=self.bucket,
                Key=object_key,
                Fields={"Content-Type": mime_type},
                Conditions=[{"Content-Type": mime_type}, ["content-length-range", size, size]],
                ExpiresIn=ttl,
            )
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, "presign-post") from exc
        return {"url": post["url"], "fields": post["fields"], "method": "POST"}

    def stat(self, object_key: str) -> ObjectStat | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise storage_error(exc, "stat") from exc
        except BotoCoreError as exc:
            raise storage_error(exc, "stat") from exc
        return ObjectStat(
            size=int(head["ContentLength"]),
            content_type=head.get("ContentType") or "",
            etag=str(head.get("ETag", "")).strip('"'),
        )

    def signed_url(self, object_key: str, *, ttl: int) -> str:
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=ttl
            )
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, "presign-get") from exc

    def open(self, object_key: str) -> BinaryIO:
        """The object's body as a stream (not downloaded whole, unlike ``S3Storage.open``)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=object_key)["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, "open") from exc

    def read_head(self, object_key: str, length: int = 256 * 1024) -> bytes:
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=object_key, Range=f"bytes=0-{length - 1}"
            )["Body"]
            try:
                return body.read(length)
            finally:
                body.close()
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, "read") from exc

    def delete(self, object_key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=object_key)
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, "delete") from exc

    def list(self, prefix: str, *, limit: int = 1000) -> list[ListedObject]:
        found: list[ListedObject] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(
                        ListedObject(
                            key=item["Key"], size=int(item["Size"]), modified=item["LastModified"]
                        )
                    )
                    if len(found) >= limit:
                        return found
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, "list") from exc
        return found
