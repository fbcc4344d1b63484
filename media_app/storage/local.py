"""Local disk under MEDIA_ROOT. Browsers upload by a signed PUT to PODI and download through a
signed, expiring PODI URL (``/media-upload/<token>``, ``/media-download/<token>``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage

from media_app import tokens
from media_app.storage.base import ListedObject, MediaBackend, ObjectStat, storage_error


class LocalBackend(MediaBackend):
    name = "local"
    bucket = ""

    def __init__(self):
        self.storage = FileSystemStorage(location=str(settings.MEDIA_ROOT), allow_overwrite=True)

    def _path(self, object_key: str) -> Path:
        try:
            return Path(self.storage.path(object_key))
        except SuspiciousFileOperation as exc:
            raise storage_error(exc, "path") from exc

    def upload_credentials(self, *, object_key, mime_type, size, user_id, ttl) -> dict:
        token, _ = tokens.local_put_token(
            object_key=object_key, size=size, mime_type=mime_type, ttl=ttl
        )
        return {
            "uploadUrl": f"{settings.PUBLIC_BASE_URL}/media-upload/{token}",
            "method": "PUT",
            "headers": {"Content-Type": mime_type},
        }

    def stat(self, object_key: str) -> ObjectStat | None:
        try:
            info = self._path(object_key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, "stat") from exc
        return ObjectStat(size=info.st_size, content_type=None)

    def signed_url(self, object_key: str, *, ttl: int) -> str:
        token, _ = tokens.local_get_token(object_key=object_key, ttl=ttl)
        return f"{settings.PUBLIC_BASE_URL}/media-download/{token}"

    def open(self, object_key: str) -> BinaryIO:
        try:
            return open(self._path(object_key), "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise storage_error(exc, "open") from exc

    def list(self, prefix: str, *, limit: int = 1000) -> list[ListedObject]:
        root = Path(self.storage.location)
        directory, _, _ = prefix.rpartition("/")
        start = self._path(directory) if directory else root
        found: list[ListedObject] = []
        if not start.is_dir():
            return found
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                key = path.relative_to(root).as_posix()
                if not key.startswith(prefix):
                    continue
                info = path.stat()
                found.append(
                    ListedObject(
                        key=key,
                        size=info.st_size,
                        modified=datetime.fromtimestamp(info.st_mtime, tz=UTC),
                    )
                )
                if len(found) >= limit:
                    return found
        return found
