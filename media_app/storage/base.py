"""The one small interface every storage backend implements, plus streaming helpers.

Backends wrap a Django ``Storage`` (``self.storage``) for writes and add what the storage API
lacks: browser upload grants, signed URLs, object metadata, ranged reads.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from django.core.files import File
from PIL import Image

from media_app.error_codes import MEDIA_STORAGE_ERROR, MEDIA_TOO_LARGE
from podi.errors import AppError

logger = logging.getLogger("media_app.storage")

CHUNK_SIZE = 256 * 1024
IMAGE_HEAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class ObjectStat:
    size: int
    content_type: str | None  # None: the backend keeps no type (local disk)
    etag: str = ""


@dataclass(frozen=True)
class SavedObject:
    key: str
    size: int
    sha256: str
    head: bytes  # the first IMAGE_HEAD_BYTES, for probing image dimensions


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    modified: datetime | None


class HashingReader(io.RawIOBase):
    """Reads a stream in chunks, counting bytes, hashing them and keeping the first few.

    Raises ``MEDIA_TOO_LARGE`` as soon as more than ``max_bytes`` went through, so an oversized
    upload is cut off instead of being stored first and measured later.
    """

    def __init__(self, stream: BinaryIO, *, max_bytes: int | None = None):
        super().__init__()
        self._stream = stream
        self._max = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._head = bytearray()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (fewer only at the end); ``-1`` reads the rest."""
        if size == 0:
            return b""
        wanted = None if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        while wanted is None or got < wanted:
            ask = CHUNK_SIZE if wanted is None else min(CHUNK_SIZE, wanted - got)
            chunk = self._stream.read(ask)
            if not chunk:
                break
            if isinstance(chunk, str):
                chunk = chunk.encode()
            self._take(chunk)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._max is not None and self.size > self._max:
            raise AppError(
                MEDIA_TOO_LARGE,
                f"The file is larger than {self._max} bytes.",
                details={"maxBytes": self._max},
            )
        self._hash.update(chunk)
        if len(self._head) < IMAGE_HEAD_BYTES:
            self._head.extend(chunk[: IMAGE_HEAD_BYTES - len(self._head)])

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def head(self) -> bytes:
        return bytes(self._head)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mime_type: str


def probe_image(data: bytes | BinaryIO) -> ImageInfo | None:
    """Width, height and type from an image's first bytes, or None if Pillow cannot tell."""
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        with Image.open(stream) as image:
            width, height = image.size
            mime = Image.MIME.get(image.format or "", "")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None
    if width <= 0 or height <= 0:
        return None
    return ImageInfo(width=int(width), height=int(height), mime_type=mime)


def storage_error(exc: BaseException, action: str) -> AppError:
    logger.warning("storage %s failed: %s: %s", action, type(exc).__name__, exc)
    return AppError(MEDIA_STORAGE_ERROR, details={"action": action})


class MediaBackend:
    """What media_app needs from a storage backend. Subclasses: local, oss, s3."""

    name = ""
    bucket = ""
    storage = None  # a django.core.files.storage.Storage

    # --- browser uploads ----------------------------------------------------------------
    def upload_credentials(
        self, *, object_key: str, mime_type: str, size: int, user_id: int, ttl: int
    ) -> dict:
        """What a browser needs to upload ``object_key`` directly (the provider part of sts)."""
        raise NotImplementedError

    def verify_upload(self, object_key: str, *, size: int, mime_type: str) -> ObjectStat | None:
        """The object's metadata; None while it is absent. Callers compare size and type."""
        return self.stat(object_key)

    # --- objects ------------------------------------------------------------------------
    def stat(self, object_key: str) -> ObjectStat | None:
        raise NotImplementedError

    def exists(self, object_key: str) -> bool:
        return self.stat(object_key) is not None

    def size(self, object_key: str) -> int | None:
        stat = self.stat(object_key)
        return None if stat is None else stat.size

    def signed_url(self, object_key: str, *, ttl: int) -> str:
        raise NotImplementedError

    def open(self, object_key: str) -> BinaryIO:
        raise NotImplementedError

    def read_head(self, object_key: str, length: int = IMAGE_HEAD_BYTES) -> bytes:
        with self.open(object_key) as stream:
            return stream.read(length)

    def save_stream(
        self,
        object_key: str,
        stream: BinaryIO,
        *,
        mime_type: str,
        max_bytes: int | None = None,
    ) -> SavedObject:
        """Copy ``stream`` into storage chunk by chunk, hashing as it goes; overwrites."""
        reader = HashingReader(stream, max_bytes=max_bytes)
        content = File(reader, name=object_key)
        content.content_type = mime_type
        try:
            saved_name = self.storage.save(object_key, content)
        except AppError:
            self._discard(object_key)
            raise
        except Exception as exc:  # any backend failure; nothing half-written may remain
            self._discard(object_key)
            raise storage_error(exc, "save") from exc
        if saved_name != object_key:  # a storage that renamed on a clash: keep ours only
            self._discard(saved_name)
            raise storage_error(RuntimeError(f"stored as {saved_name!r}"), "save")
        return SavedObject(key=object_key, size=reader.size, sha256=reader.sha256, head=reader.head)

    def delete(self, object_key: str) -> None:
        try:
            self.storage.delete(object_key)
        except Exception as exc:
            raise storage_error(exc, "delete") from exc

    def list(self, prefix: str, *, limit: int = 1000) -> list[ListedObject]:
        raise NotImplementedError

    # --- helpers ------------------------------------------------------------------------
    def _discard(self, object_key: str) -> None:
        try:
            self.storage.delete(object_key)
        except Exception as exc:  # best effort: the original error is what the caller sees
            logger.warning("could not remove %s after a failed write: %s", object_key, exc)
