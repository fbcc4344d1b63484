"""Reads that decide who may see which media object (docs/architecture.md §5)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from media_app.error_codes import MEDIA_DOWNLOAD_DENIED, MEDIA_OBJECT_NOT_FOUND
from media_app.models import MediaObject, MediaPurpose, MediaStatus
from media_app.paths import file_object_key
from podi.access import READ, Principal
from podi.errors import AppError

AREA = "media"


def media_get_uploaded_for_user(*, user, object_key: str) -> MediaObject:
    """The caller's uploaded object with this key.

    404 ``MEDIA_OBJECT_NOT_FOUND`` when it does not exist, is not uploaded, or is someone
    else's: the three cases are indistinguishable to the caller.
    """
    user_id = getattr(user, "pk", user)
    media = MediaObject.objects.filter(
        object_key=str(object_key), owner_id=user_id, status=MediaStatus.UPLOADED
    ).first()
    if media is None:
        raise AppError(MEDIA_OBJECT_NOT_FOUND)
    return media


def media_visible_to(principal: Principal, *, action: str = READ) -> QuerySet[MediaObject]:
    """The media objects ``principal`` may see (``read``) or change (``write``): its user's, or
    everyone's for staff and service-account keys with ``media:<action>``
    (docs/architecture.md §5)."""
    if not principal.has_scope(AREA, action):
        return MediaObject.objects.none()
    if principal.acts_for_anyone(AREA, action):
        return MediaObject.objects.all()
    return MediaObject.objects.filter(owner_id=principal.user_id)


def media_get_for_principal(
    principal: Principal, object_key: str, *, action: str = READ
) -> MediaObject:
    """An object (any status but deleted) ``principal`` may see or change; 404
    ``MEDIA_OBJECT_NOT_FOUND`` otherwise."""
    media = (
        media_visible_to(principal, action=action)
        .filter(object_key=str(object_key))
        .exclude(status__in=[MediaStatus.DELETED, MediaStatus.STAGED])
        .first()
    )
    if media is None:
        raise AppError(MEDIA_OBJECT_NOT_FOUND)
    return media


def media_get_downloadable(principal: Principal, object_key: str) -> MediaObject:
    """An uploaded object ``principal`` may download (the access rule, action ``read``).

    Someone else's object and an unknown key are the same 403 ``MEDIA_DOWNLOAD_DENIED`` (the
    route's contract); only those who may see the object learn that it is not uploaded (404). A
    staged object (a task's output before the charge) is an unknown key to everyone
    (docs/adr/0011-money-holes.md).
    """
    media = (
        media_visible_to(principal, action=READ)
        .filter(object_key=str(object_key))
        .exclude(status=MediaStatus.STAGED)
        .first()
    )
    if media is None:
        raise AppError(MEDIA_DOWNLOAD_DENIED)
    if media.status != MediaStatus.UPLOADED:
        raise AppError(MEDIA_OBJECT_NOT_FOUND)
    return media


def file_get(*, path: str) -> MediaObject:
    """The file-API object at a normalised path."""
    media = MediaObject.objects.filter(
        object_key=file_object_key(path), purpose=MediaPurpose.FILE, status=MediaStatus.UPLOADED
    ).first()
    if media is None:
        raise AppError(MEDIA_OBJECT_NOT_FOUND)
    return media


def file_list(*, prefix: str) -> QuerySet[MediaObject]:
    """File-API objects under a normalised prefix ("" for all), by path."""
    return MediaObject.objects.filter(
        object_key__startswith=file_object_key(prefix),
        purpose=MediaPurpose.FILE,
        status=MediaStatus.UPLOADED,
    ).order_by("object_key")


def media_staged(*, limit: int = 200) -> list[tuple[str, str, datetime]]:
    """``(objectKey, taskId, createdAt)`` of staged objects, oldest first (for the sweep)."""
    return list(
        MediaObject.objects.filter(status=MediaStatus.STAGED)
        .order_by("created_at", "pk")
        .values_list("object_key", "task_id", "created_at")[:limit]
    )
