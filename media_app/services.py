"""Writes of the media app: upload keys, upload grants, completion, callbacks, outputs, files.

Other apps call: ``media_store_output`` (or ``media_write_output`` then ``media_stage`` or
``media_publish_in_statement``), ``media_publish``, ``media_discard_staged``,
``media_open``, ``signed_download_url`` (and the selectors ``media_get_uploaded_for_user`` and
``media_staged``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import mimetypes
from datetime import UTC, datetime, timedelta
from typing import BinaryIO
from urllib.parse import parse_qs

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from media_app import tokens
from media_app.error_codes import (
    MEDIA_CALLBACK_INVALID,
    MEDIA_DOWNLOAD_DENIED,
    MEDIA_OBJECT_NOT_FOUND,
    MEDIA_STS_INVALID_PARAM,
    MEDIA_TOO_LARGE,
    MEDIA_UPLOAD_INCOMPLETE,
    MEDIA_UPLOAD_MISMATCH,
    MEDIA_UPLOAD_UNAUTHORIZED,
)
from media_app.models import MediaObject, MediaPurpose, MediaStatus, UploadKeyVersion
from media_app.paths import (
    base_mime,
    file_object_key,
    output_object_key,
    upload_object_key,
)
from media_app.storage import get_backend
from media_app.storage.base import CHUNK_SIZE, ImageInfo, probe_image
from media_app.storage.oss_signing import CallbackRefused, verify_callback
from podi.common import RowReader
from podi.errors import AppError

logger = logging.getLogger("media_app")

MAX_FILE_NAME = 255
MAX_TASK_ID = 64
SIGNED_TTL_MIN, SIGNED_TTL_MAX = 60, 3600
STORED = (MediaStatus.STAGED, MediaStatus.UPLOADED)  # in storage (visible or not yet)


# --- Upload keys ---------------------------------------------------------------------------


def _key_version(user_id: int) -> int:
    return (
        UploadKeyVersion.objects.filter(user_id=user_id).values_list("version", flat=True).first()
        or 1
    )


def upload_key_issue(*, user) -> tuple[str, datetime]:
    """A signed upload key for ``user``: ``(key, expiresAt)``; valid ``UPLOAD_TOKEN_TTL`` s."""
    token, expires = tokens.upload_key_issue(
        user_id=user.pk, version=_key_version(user.pk), ttl=settings.UPLOAD_TOKEN_TTL
    )
    return token, datetime.fromtimestamp(expires, tz=UTC)


def upload_keys_revoke(*, user) -> int:
    """Invalidate every outstanding upload key of ``user``; returns the new key version."""
    with transaction.atomic():
        row, created = UploadKeyVersion.objects.select_for_update().get_or_create(
            user=user, defaults={"version": 2, "revoked_at": timezone.now()}
        )
        if not created:
            UploadKeyVersion.objects.filter(pk=row.pk).update(
                version=F("version") + 1, revoked_at=timezone.now()
            )
            row.refresh_from_db()
    return row.version


def upload_key_user(raw: str | None):
    """The active user an upload key was issued to, or 401 ``MEDIA_UPLOAD_UNAUTHORIZED``."""
    if not raw:
        raise AppError(MEDIA_UPLOAD_UNAUTHORIZED, "An uploadKey is required.")
    try:
        claims = tokens.upload_key_read(raw)
    except tokens.TokenInvalid as exc:
        raise AppError(MEDIA_UPLOAD_UNAUTHORIZED, f"The upload key is not valid ({exc}).") from None
    user = get_user_model().objects.filter(pk=claims.user_id, is_active=True).first()
    if user is None:
        raise AppError(MEDIA_UPLOAD_UNAUTHORIZED, "The upload key's user is not active.")
    if claims.version != _key_version(user.pk):
        raise AppError(MEDIA_UPLOAD_UNAUTHORIZED, "The upload key was revoked.")
    return user


# --- Upload grants (sts) -----------------------------------------------------------------------


def _invalid_param(field: str, message: str, **details) -> AppError:
    return AppError(
        MEDIA_STS_INVALID_PARAM, f"{field}: {message}", details={"field": field, **details}
    )


def _allowed_types() -> set[str]:
    return {base_mime(item) for item in settings.MEDIA_ALLOWED_TYPES}


def media_upload_grant(
    *, user, file_name: str, mime_type: str, file_size: int, task_id: str = ""
) -> tuple[MediaObject, dict, int]:
    """Check the declared upload, get the backend's browser credentials, record a pending object.

    Returns ``(media, credentials, ttl)``. Refused input (type not allowed, size out of range,
    bad name) is 400 ``MEDIA_STS_INVALID_PARAM`` and records nothing.
    """
    mime = base_mime(mime_type)
    if mime not in _allowed_types():
        raise _invalid_param(
            "mimeType", f"type {mime_type!r} is not allowed.", allowed=sorted(_allowed_types())
        )
    if isinstance(file_size, bool) or not isinstance(file_size, int) or file_size < 1:
        raise _invalid_param("fileSize", "must be a positive integer.")
    if file_size > settings.MEDIA_MAX_UPLOAD_BYTES:
        raise _invalid_param(
            "fileSize",
            f"larger than the limit of {settings.MEDIA_MAX_UPLOAD_BYTES} bytes.",
            maxBytes=settings.MEDIA_MAX_UPLOAD_BYTES,
        )
    file_name = str(file_name or "").strip()
    if not file_name or len(file_name) > MAX_FILE_NAME or not file_name.isprintable():
        raise _invalid_param("fileName", f"1-{MAX_FILE_NAME} printable characters.")
    task_id = str(task_id or "").strip()
    if len(task_id) > MAX_TASK_ID or (task_id and not task_id.isprintable()):
        raise _invalid_param("taskId", f"at most {MAX_TASK_ID} printable characters.")

    backend = get_backend()
    object_key = upload_object_key(user_id=user.pk, mime_type=mime, file_name=file_name)
    ttl = settings.OSS_STS_DURATION if backend.name == "oss" and settings.OSS_ROLE_ARN else None
    ttl = ttl or settings.MEDIA_UPLOAD_URL_TTL
    credentials = backend.upload_credentials(
        object_key=object_key, mime_type=mime, size=file_size, user_id=user.pk, ttl=ttl
    )
    media = MediaObject.objects.create(
        object_key=object_key,
        owner=user,
        backend=backend.name,
        bucket=backend.bucket,
        file_name=file_name,
        size=file_size,
        mime_type=mime,
        status=MediaStatus.PENDING,
        purpose=MediaPurpose.INPUT,
        task_id=task_id,
    )
    return media, credentials, ttl


# --- Local backend: signed PUT and GET --------------------------------------------------------


def local_upload_receive(
    *, token: str, stream: BinaryIO, content_type: str, content_length: int | None
) -> MediaObject:
    """The local backend's signed PUT: stream the body into storage for a pending object.

    The body must have exactly the declared size and Content-Type; a refused body is not kept.
    """
    try:
        grant = tokens.local_put_read(token)
    except tokens.TokenInvalid as exc:
        raise AppError(MEDIA_UPLOAD_UNAUTHORIZED, f"The upload URL is not valid ({exc}).") from None
    backend = get_backend()
    media = MediaObject.objects.filter(
        object_key=grant.object_key, status=MediaStatus.PENDING
    ).first()
    if backend.name != "local" or media is None:
        raise AppError(MEDIA_UPLOAD_UNAUTHORIZED, "This upload URL is no longer usable.")
    details = {"declaredSize": grant.size, "declaredType": grant.mime_type}
    if base_mime(content_type) != grant.mime_type:
        raise AppError(
            MEDIA_UPLOAD_MISMATCH,
            "The Content-Type differs from the declared type.",
            details=details,
        )
    if content_length is not None and content_length != grant.size:
        raise AppError(
            MEDIA_UPLOAD_MISMATCH, "The body size differs from the declared size.", details=details
        )
    saved = backend.save_stream(
        grant.object_key, stream, mime_type=grant.mime_type, max_bytes=grant.size
    )
    if saved.size != grant.size:
        _discard_object(backend, grant.object_key)
        raise AppError(
            MEDIA_UPLOAD_MISMATCH, "The body size differs from the declared size.", details=details
        )
    return media


# Every local download reads its row: compiled once per process (ADR 0028).
_UPLOADED = RowReader(MediaObject, "object_key", where={"status": MediaStatus.UPLOADED})


def local_download_open(*, token: str) -> tuple[BinaryIO, MediaObject]:
    """The stream and row behind a local signed download URL (403 when expired or forged)."""
    try:
        object_key = tokens.local_get_read(token)
    except tokens.TokenInvalid as exc:
        raise AppError(MEDIA_DOWNLOAD_DENIED, f"The download URL is not valid ({exc}).") from None
    backend = get_backend()
    media = _UPLOADED.get(object_key)
    if backend.name != "local" or media is None or not backend.exists(object_key):
        raise AppError(MEDIA_OBJECT_NOT_FOUND)
    return backend.open(object_key), media


# --- Completion --------------------------------------------------------------------------------


def _mark_uploaded(
    media: MediaObject,
    *,
    size: int,
    sha256: str = "",
    image: ImageInfo | None = None,
    width: int | None = None,
    height: int | None = None,
) -> MediaObject:
    """Pending → uploaded under a row lock; a second caller gets the row as the first left it."""
    with transaction.atomic():
        row = MediaObject.objects.select_for_update().get(pk=media.pk)
        if row.status != MediaStatus.PENDING:
            return row
        row.status = MediaStatus.UPLOADED
        row.size = size
        row.sha256 = sha256 or row.sha256
        row.width = image.width if image else width
        row.height = image.height if image else height
        row.uploaded_at = timezone.now()
        row.save(
            update_fields=[
                "status",
                "size",
                "sha256",
                "width",
                "height",
                "uploaded_at",
                "updated_at",
            ]
        )
    return row


def _mark_deleted(media: MediaObject) -> None:
    MediaObject.objects.filter(pk=media.pk).exclude(status=MediaStatus.DELETED).update(
        status=MediaStatus.DELETED, deleted_at=timezone.now(), updated_at=timezone.now()
    )


def _discard_object(backend, object_key: str) -> None:
    try:
        backend.delete(object_key)
    except AppError:
        logger.warning("could not delete refused upload %s", object_key)


def _hash_stored(backend, object_key: str) -> tuple[str, bytes]:
    digest = hashlib.sha256()
    head = bytearray()
    with backend.open(object_key) as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
            if len(head) < 256 * 1024:
                head.extend(chunk[: 256 * 1024 - len(head)])
    return digest.hexdigest(), bytes(head)


def media_complete(*, media: MediaObject) -> MediaObject:
    """Check that the pending object is in storage with its declared size and type; record it.

    Absent → 409 ``MEDIA_UPLOAD_INCOMPLETE`` (the client may retry). Present with another size
    or type → the object is deleted and the row marked deleted, 400 ``MEDIA_UPLOAD_MISMATCH``.
    Already uploaded → returned unchanged.
    """
    if media.status == MediaStatus.UPLOADED:
        return media
    if media.status != MediaStatus.PENDING:
        raise AppError(MEDIA_OBJECT_NOT_FOUND)
    backend = get_backend()
    stat = backend.verify_upload(media.object_key, size=media.size, mime_type=media.mime_type)
    if stat is None:
        raise AppError(MEDIA_UPLOAD_INCOMPLETE)
    type_ok = stat.content_type is None or base_mime(stat.content_type) == media.mime_type
    if stat.size != media.size or not type_ok:
        _discard_object(backend, media.object_key)
        _mark_deleted(media)
        raise AppError(
            MEDIA_UPLOAD_MISMATCH,
            details={
                "declaredSize": media.size,
                "storedSize": stat.size,
                "declaredType": media.mime_type,
                "storedType": stat.content_type,
            },
        )
    sha256, image = "", None
    if backend.name == "local":  # reading it back is cheap on local disk
        sha256, head = _hash_stored(backend, media.object_key)
        image = probe_image(head) if media.is_image else None
    elif media.is_image:
        image = probe_image(backend.read_head(media.object_key))
    return _mark_uploaded(media, size=stat.size, sha256=sha256, image=image)


PENDING_GRACE = timedelta(hours=1)


def media_pending_sweep(*, limit: int = 50) -> dict[str, int]:
    """Settle upload grants that expired (plus a grace hour) without a callback or complete.

    OSS does not retry a failed callback, so an object may be in storage with nobody having
    told PODI: such uploads are completed as ``complete`` would (same checks); grants whose
    object never arrived are marked deleted. Storage errors leave the row for the next pass.
    """
    backend = get_backend()
    window = settings.MEDIA_UPLOAD_URL_TTL
    if backend.name == "oss" and settings.OSS_ROLE_ARN:
        window = max(window, settings.OSS_STS_DURATION)
    cutoff = timezone.now() - timedelta(seconds=window) - PENDING_GRACE
    rows = list(
        MediaObject.objects.filter(
            status=MediaStatus.PENDING, backend=backend.name, created_at__lt=cutoff
        ).order_by("created_at", "pk")[:limit]
    )
    counts = {"completed": 0, "expired": 0, "mismatched": 0, "failed": 0}
    for media in rows:
        try:
            media_complete(media=media)
        except AppError as exc:
            if exc.error is MEDIA_UPLOAD_INCOMPLETE:
                _mark_deleted(media)
                counts["expired"] += 1
            elif exc.error is MEDIA_UPLOAD_MISMATCH:
                counts["mismatched"] += 1
            else:
                counts["failed"] += 1
        else:
            counts["completed"] += 1
    return counts


# --- OSS callback ------------------------------------------------------------------------------


def _callback_fields(body: bytes, content_type: str) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise AppError(MEDIA_CALLBACK_INVALID, "The callback body is not UTF-8.") from None
    if base_mime(content_type) == "application/json":
        try:
            data = json.loads(text)
        except ValueError:
            raise AppError(MEDIA_CALLBACK_INVALID, "The callback body is not JSON.") from None
        if not isinstance(data, dict):
            raise AppError(MEDIA_CALLBACK_INVALID, "The callback body is not an object.")
        return {str(k): str(v) for k, v in data.items()}
    try:
        parsed = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except ValueError:
        raise AppError(MEDIA_CALLBACK_INVALID, "The callback body is malformed.") from None
    return {key: values[-1] for key, values in parsed.items()}


def _int_or_none(value: str | None) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def media_oss_callback(
    *,
    authorization: str | None,
    pubkey_url: str | None,
    path: str,
    query: str,
    body: bytes,
    content_type: str,
) -> MediaObject:
    """OSS's upload callback: verify the RSA signature first, then bucket, prefix, size, type.

    Every refusal is 400 ``MEDIA_CALLBACK_INVALID`` and records nothing; a callback for an object
    that is not pending (a replay) is refused too.
    """
    try:
        verify_callback(
            authorization=authorization,
            pubkey_url_b64=pubkey_url,
            path=path,
            query=query,
            body=body,
            allowed_hosts=settings.OSS_CALLBACK_PUBKEY_HOSTS,
        )
    except CallbackRefused as exc:
        raise AppError(MEDIA_CALLBACK_INVALID, f"Callback refused: {exc}.") from None
    if settings.STORAGE_BACKEND != "oss":
        raise AppError(MEDIA_CALLBACK_INVALID, "OSS is not the storage backend.")
    fields = _callback_fields(body, content_type)
    if fields.get("bucket") != settings.OSS_BUCKET:
        raise AppError(MEDIA_CALLBACK_INVALID, "Callback refused: another bucket.")
    object_key = fields.get("object", "")
    if not object_key.startswith(f"{settings.MEDIA_UPLOAD_PREFIX}/"):
        raise AppError(
            MEDIA_CALLBACK_INVALID, "Callback refused: the object is outside the prefix."
        )
    media = MediaObject.objects.filter(object_key=object_key).first()
    if media is None:
        raise AppError(MEDIA_CALLBACK_INVALID, "Callback refused: no upload was granted for it.")
    if media.status != MediaStatus.PENDING:
        raise AppError(MEDIA_CALLBACK_INVALID, "Callback refused: already recorded (replay).")
    if object_key.split("/")[len(settings.MEDIA_UPLOAD_PREFIX.split("/"))] != str(media.owner_id):
        raise AppError(
            MEDIA_CALLBACK_INVALID, "Callback refused: the object is outside the prefix."
        )
    size = _int_or_none(fields.get("size"))
    mime = base_mime(fields.get("mimeType", ""))
    if (
        size is None
        or size != media.size
        or size > settings.MEDIA_MAX_UPLOAD_BYTES
        or mime != media.mime_type
    ):
        _discard_object(get_backend(), object_key)
        _mark_deleted(media)
        raise AppError(
            MEDIA_CALLBACK_INVALID,
            "Callback refused: the object's size or type differs from the declared upload.",
        )
    return _mark_uploaded(
        media,
        size=size,
        width=_int_or_none(fields.get("width")),
        height=_int_or_none(fields.get("height")),
    )


# --- Outputs and reads for other apps ----------------------------------------------------------


def media_store_output(
    *,
    user_id: int,
    task_id: str,
    filename: str,
    stream: BinaryIO,
    mime_type: str | None = None,
    size: int | None = None,
    staged: bool = False,
) -> MediaObject:
    """Stream a file into storage at ``results/<userId>/<taskId>/<safe filename>``.

    Chunked copy (never whole in memory) with sha256 and size computed on the way, image
    width/height read with Pillow from the first bytes; recorded as uploaded, purpose output.
    ``staged``: recorded as ``staged`` instead, reachable by nobody until :func:`media_publish`
    (a task's outputs become visible only with the charge, docs/adr/0011-money-holes.md).
    Idempotent per ``(task_id, filename)``: an output already stored is returned as it is.
    ``size`` is a hint only; the streamed size is what is recorded.
    """
    media = media_write_output(
        user_id=user_id, task_id=task_id, filename=filename, stream=stream, mime_type=mime_type
    )
    if media.pk is not None:
        return media
    if not staged:
        media.status, media.uploaded_at = MediaStatus.UPLOADED, timezone.now()
    return _upsert(media)


def media_write_output(
    *,
    user_id: int,
    task_id: str,
    filename: str,
    stream: BinaryIO,
    mime_type: str | None = None,
    fresh: bool = False,
) -> MediaObject:
    """The bytes of :func:`media_store_output` without its row: the file is written and a
    staged ``MediaObject`` returned UNSAVED (no ``pk``), for the caller to record with
    :func:`media_stage` or in its own statement (:func:`media_publish_in_statement`,
    docs/adr/0024-a-success-in-one-statement.md). An output already stored is returned as it
    is (saved), unless ``fresh``: the key is the caller's alone (one attempt's output) and
    whatever is there is its own earlier write, so the bytes are written without that read.
    Until its row is written the file is reachable by nobody."""
    object_key = output_object_key(user_id=user_id, task_id=task_id, filename=filename)
    if not fresh and _stored_status(object_key) in STORED:
        existing = MediaObject.objects.filter(object_key=object_key).first()
        if existing is not None and existing.status in STORED:  # still so
            return existing
    backend = get_backend()
    guessed = mime_type or mimetypes.guess_type(object_key)[0] or "application/octet-stream"
    saved = backend.save_stream(object_key, stream, mime_type=guessed)
    image = probe_image(saved.head) if saved.head else None
    mime = guessed
    if image and image.mime_type and base_mime(guessed) in ("", "application/octet-stream"):
        mime = image.mime_type
    return MediaObject(
        object_key=object_key,
        owner_id=user_id,
        backend=backend.name,
        bucket=backend.bucket,
        file_name=str(filename)[:MAX_FILE_NAME],
        size=saved.size,
        mime_type=mime[:255],
        sha256=saved.sha256,
        width=image.width if image else None,
        height=image.height if image else None,
        status=MediaStatus.STAGED,
        purpose=MediaPurpose.OUTPUT,
        task_id=str(task_id)[:MAX_TASK_ID],
        uploaded_at=None,
        deleted_at=None,
    )


def media_stage(media: list[MediaObject]) -> None:
    """Record the unsaved objects of :func:`media_write_output` as staged (one upsert each; a
    row left by an earlier attempt, or a concurrent writer of the same output, whose bytes are
    the ones just written, takes these values). Saved ones are left as they are."""
    for item in media:
        if item.pk is None:
            _upsert(item)


def _stored_status(object_key: str) -> str | None:
    """The status of the object at ``object_key`` (None when unknown): one indexed read."""
    table = connection.ops.quote_name(MediaObject._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT status FROM {table} WHERE object_key = %s", [object_key])  # noqa: S608
        row = cursor.fetchone()
    return row[0] if row else None


@functools.cache
def _upsert_parts() -> tuple[str, list, str, str]:
    """The table, the written fields, their column list and the ``DO UPDATE SET`` of an output's
    upsert (an earlier row keeps its key and its birth)."""
    quote = connection.ops.quote_name
    fields = [f for f in MediaObject._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(quote(f.column) for f in fields)
    kept = {"object_key", "created_at"}
    updates = ", ".join(
        f"{quote(f.column)} = excluded.{quote(f.column)}" for f in fields if f.attname not in kept
    )
    return quote(MediaObject._meta.db_table), fields, columns, updates


@functools.cache
def _upsert_sql() -> tuple[str, list]:
    quote = connection.ops.quote_name
    table, fields, columns, updates = _upsert_parts()
    sql = (
        f"INSERT INTO {table} ({columns}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) ON CONFLICT (object_key) "
        f"DO UPDATE SET {updates} WHERE {table}.{quote('status')} <> %s RETURNING id, created_at"
    )
    return sql, fields


def _upsert(media: MediaObject) -> MediaObject:
    """Insert ``media``, or update the row at its key with its values; one statement (the
    ORM's ``bulk_create(update_conflicts=...)`` costs more to build than to run). A row
    published already is never touched: ``media`` takes its values instead."""
    sql, fields = _upsert_sql()
    params = [f.get_db_prep_save(f.pre_save(media, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, MediaStatus.UPLOADED])
        row = cursor.fetchone()
    if row is None:  # published meanwhile (a repeat of a finished success): left as it is
        existing = MediaObject.objects.get(object_key=media.object_key)
        for field in MediaObject._meta.concrete_fields:
            setattr(media, field.attname, getattr(existing, field.attname))
        media._state.adding, media._state.db = False, connection.alias
        return media
    pk, created_at = row
    media.pk = pk
    if isinstance(created_at, str):  # SQLite returns the stored text (UTC) from a raw cursor
        created_at = parse_datetime(created_at)
    if created_at is not None and timezone.is_naive(created_at):
        created_at = timezone.make_aware(created_at, UTC)
    media.created_at = created_at
    media._state.adding, media._state.db = False, connection.alias
    return media


def media_publish(*, object_keys: list[str]) -> int:
    """Make staged objects ``uploaded`` (downloadable, usable as inputs); returns how many.

    One guarded update, meant to run inside the caller's transaction (``task_finish`` publishes
    a task's outputs in the transaction that confirms its charge). Objects not staged are left
    as they are.
    """
    if not object_keys:
        return 0
    now = timezone.now()
    return MediaObject.objects.filter(
        object_key__in=[str(key) for key in object_keys], status=MediaStatus.STAGED
    ).update(status=MediaStatus.UPLOADED, uploaded_at=now, updated_at=now)


def media_publish_in_statement(*, media: list[MediaObject], when_sql: str) -> tuple[str, list]:
    """``media_publish`` as a CTE for a caller's own statement (PostgreSQL): ``media_published``
    makes the objects ``uploaded`` when the SQL condition ``when_sql`` (over the caller's
    earlier CTEs) holds: a staged row is published, and an object of
    :func:`media_write_output` not recorded yet is inserted published, so its row costs no
    statement of its own. Returns the CTE and its parameters. Only our own SQL is
    interpolated."""
    sql, fields = _publish_sql()
    now = timezone.now()
    # The objects themselves are left as they are (staged): if the statement does not apply,
    # the caller stages them.
    published = {"status": MediaStatus.UPLOADED, "uploaded_at": now, "updated_at": now}
    columns: list[list] = [[] for _ in fields]
    for item in media:
        for column, field in zip(columns, fields, strict=True):
            value = published.get(field.attname, getattr(item, field.attname))
            column.append(field.get_db_prep_save(value, connection))
    return sql.replace("{when}", when_sql), [*columns, MediaStatus.STAGED]


@functools.cache
def _publish_sql() -> tuple[str, list]:
    table, fields, names, updates = _upsert_parts()
    arrays = ", ".join(f"%s::{f.db_type(connection).split(' CHECK')[0]}[]" for f in fields)
    sql = (
        f"media_published AS (INSERT INTO {table} ({names}) "  # noqa: S608
        f"SELECT * FROM unnest({arrays}) WHERE {{when}} "
        f"ON CONFLICT (object_key) DO UPDATE SET {updates} WHERE {table}.status = %s "
        "RETURNING id)"
    )
    return sql, fields


def media_discard_staged(*, object_keys: list[str]) -> int:
    """Remove staged objects from storage and forget them; returns how many were discarded.

    The caller decides that nobody will publish them any more (their task ended otherwise, or
    its submit failed). Nobody ever saw them, so no row is kept: the key is as unknown as one
    never written. The file goes first, then the row; a storage error leaves the row staged
    for the next reconciler pass. A key without a row (a submit whose transaction rolled the
    row back) loses its file too; a key whose row is not staged is never touched.
    """
    backend = get_backend()
    discarded = 0
    for object_key in object_keys:
        rows = MediaObject.objects.filter(object_key=str(object_key))
        if rows.exclude(status=MediaStatus.STAGED).exists():
            continue
        rows = rows.filter(status=MediaStatus.STAGED)
        try:
            backend.delete(str(object_key))
        except AppError:
            logger.warning("could not delete staged object %s; retrying later", object_key)
            continue
        discarded += rows.delete()[0] > 0
    return discarded


def media_open(*, object_key: str) -> BinaryIO:
    """A readable binary stream of a stored object (the caller closes it)."""
    if not MediaObject.objects.filter(
        object_key=str(object_key), status=MediaStatus.UPLOADED
    ).exists():
        raise AppError(MEDIA_OBJECT_NOT_FOUND)
    return get_backend().open(str(object_key))


def signed_download_url(*, object_key: str, ttl: int = 600) -> tuple[str, datetime]:
    """A URL anyone holding it may GET for ``ttl`` seconds: ``(url, expiresAt)``.

    Local: a PODI-signed ``/media-download/<token>`` under PUBLIC_BASE_URL; OSS: an oss2 V4
    signed URL; S3: a presigned GET. No authorization here: callers decide who gets one.
    """
    ttl = max(1, int(ttl))
    expires_at = (timezone.now() + timedelta(seconds=ttl)).replace(microsecond=0)
    return get_backend().signed_url(str(object_key), ttl=ttl), expires_at


def media_delete(*, media: MediaObject) -> MediaObject:
    """Remove the object from storage and mark the row deleted (idempotent)."""
    if media.status == MediaStatus.DELETED:
        return media
    get_backend().delete(media.object_key)
    _mark_deleted(media)
    media.refresh_from_db()
    return media


# --- File API ----------------------------------------------------------------------------------


def file_put(*, user, path: str, stream: BinaryIO, mime_type: str, file_name: str) -> MediaObject:
    """Store a file-API upload at ``files/<path>`` (overwriting), streamed and hashed.

    Over ``MEDIA_MAX_UPLOAD_BYTES`` → 413 ``MEDIA_TOO_LARGE`` and nothing is kept.
    """
    object_key = file_object_key(path)
    backend = get_backend()
    mime = base_mime(mime_type) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    saved = backend.save_stream(
        object_key, stream, mime_type=mime, max_bytes=settings.MEDIA_MAX_UPLOAD_BYTES
    )
    image = probe_image(saved.head) if mime.startswith("image/") else None
    values = {
        "owner": user,
        "backend": backend.name,
        "bucket": backend.bucket,
        "file_name": str(file_name or path.rsplit("/", 1)[-1])[:MAX_FILE_NAME],
        "size": saved.size,
        "mime_type": mime[:255],
        "sha256": saved.sha256,
        "width": image.width if image else None,
        "height": image.height if image else None,
        "status": MediaStatus.UPLOADED,
        "purpose": MediaPurpose.FILE,
        "task_id": "",
        "uploaded_at": timezone.now(),
        "deleted_at": None,
    }
    try:
        with transaction.atomic():
            media, _ = MediaObject.objects.update_or_create(object_key=object_key, defaults=values)
    except IntegrityError:
        media = MediaObject.objects.get(object_key=object_key)
    return media


def file_too_large(declared: int | None) -> None:
    """413 ``MEDIA_TOO_LARGE`` for a request body that is over the limit before reading it."""
    limit = settings.MEDIA_MAX_UPLOAD_BYTES
    if declared is not None and declared > limit:
        raise AppError(
            MEDIA_TOO_LARGE, f"The file is larger than {limit} bytes.", details={"maxBytes": limit}
        )
