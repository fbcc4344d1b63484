"""Object keys and paths: generated upload keys, safe output names, file-API path normalisation."""

from __future__ import annotations

import mimetypes
import re
import secrets
import unicodedata
from datetime import datetime
from urllib.parse import unquote

from django.conf import settings
from django.utils import timezone

from media_app.error_codes import MEDIA_PATH_INVALID
from podi.errors import AppError

RESULTS_PREFIX = "results"
FILES_PREFIX = "files"
MAX_PATH_LENGTH = 512
MAX_SEGMENT_BYTES = 255

_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "text/plain": "txt",
    "application/json": "json",
}
_SAFE_EXT = re.compile(r"^[a-z0-9]{1,10}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def base_mime(mime_type: str) -> str:
    """``image/PNG; x=1`` → ``image/png``."""
    return (mime_type or "").split(";", 1)[0].strip().lower()


def extension_for(mime_type: str, file_name: str = "") -> str:
    """An extension chosen from the declared type (never trusted from the client's name alone)."""
    mime = base_mime(mime_type)
    if mime in _EXTENSIONS:
        return _EXTENSIONS[mime]
    guessed = mimetypes.guess_extension(mime) if mime else None
    if guessed and _SAFE_EXT.match(guessed.lstrip(".")):
        return guessed.lstrip(".")
    _, dot, ext = file_name.rpartition(".")
    ext = ext.lower()
    return ext if dot and _SAFE_EXT.match(ext) else "bin"


def upload_object_key(
    *, user_id: int, mime_type: str, file_name: str = "", now: datetime | None = None
) -> str:
    """``rootPrefix/userId/YYYYMMDD/random.ext`` (docs/adr/0007-media-storage.md)."""
    day = (now or timezone.now()).strftime("%Y%m%d")
    random = secrets.token_hex(16)
    return f"{settings.MEDIA_UPLOAD_PREFIX}/{user_id}/{day}/{random}.{extension_for(mime_type, file_name)}"


def upload_user_prefix(user_id: int) -> str:
    return f"{settings.MEDIA_UPLOAD_PREFIX}/{user_id}/"


def safe_filename(name: str, *, default: str = "file") -> str:
    """A single path segment made of ``[A-Za-z0-9._-]``, never ``.``/``..``, at most 200 chars."""
    name = unicodedata.normalize("NFKC", str(name or "")).replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name).strip("._-")
    if not cleaned:
        cleaned = default
    if len(cleaned) > 200:
        stem, dot, ext = cleaned.rpartition(".")
        if dot and len(ext) <= 10:
            cleaned = f"{stem[: 199 - len(ext)]}.{ext}"
        else:
            cleaned = cleaned[:200]
    return cleaned


def output_object_key(*, user_id: int, task_id: str, filename: str) -> str:
    """``results/<userId>/<taskId>/<safe filename>``."""
    task = safe_filename(task_id, default="task")
    return f"{RESULTS_PREFIX}/{user_id}/{task}/{safe_filename(filename)}"


def _invalid(reason: str) -> AppError:
    return AppError(
        MEDIA_PATH_INVALID, f"The path is not acceptable: {reason}.", details={"reason": reason}
    )


def _decoded_forms(path: str) -> list[str]:
    forms = [path]
    for _ in range(3):
        decoded = unquote(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return forms


def normalise_file_path(raw: str, *, allow_empty: bool = False, directory: bool = False) -> str:
    """Normalise a file-API path or refuse it with 400 ``MEDIA_PATH_INVALID``.

    Refused: ``..`` segments (also percent-encoded, up to three times), absolute paths (``/x``,
    ``~``, ``C:``), backslashes, NUL and other control characters, more than
    ``MAX_PATH_LENGTH`` characters or a segment over ``MAX_SEGMENT_BYTES`` bytes. ``.`` and empty
    segments are dropped; the result is NFC and has no leading or trailing slash.
    """
    if not isinstance(raw, str):
        raise _invalid("not a string")
    if len(raw) > MAX_PATH_LENGTH:
        raise _invalid(f"longer than {MAX_PATH_LENGTH} characters")
    for form in _decoded_forms(raw):
        if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in form):
            raise _invalid("control character")
        if "\\" in form:
            raise _invalid("backslash")
        if form.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", form):
            raise _invalid("absolute path")
        if any(segment == ".." for segment in form.split("/")):
            raise _invalid("'..' segment")
    path = unicodedata.normalize("NFC", raw)
    segments = [segment for segment in path.split("/") if segment not in ("", ".")]
    if not segments:
        if allow_empty:
            return ""
        raise _invalid("empty")
    for segment in segments:
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise _invalid(f"a segment is longer than {MAX_SEGMENT_BYTES} bytes")
        if segment != segment.strip():
            raise _invalid("a segment starts or ends with whitespace")
    if raw.endswith("/") and not directory:
        raise _invalid("names a directory")
    return "/".join(segments)


def file_object_key(path: str) -> str:
    return f"{FILES_PREFIX}/{path}"


def file_path_of(object_key: str) -> str:
    return object_key.removeprefix(f"{FILES_PREFIX}/")
