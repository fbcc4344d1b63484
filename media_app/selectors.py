"""Reads that decide who may see which media object."""

from __future__ import annotations

from django.db.models import QuerySet

from media_app.error_codes import MEDIA_DOWNLOAD_DENIED, MEDIA_OBJECT_NOT_FOUND
from media_app.models import MediaObject, MediaPurpose, MediaStatus
from media_app.paths import file_object_key
from podi.errors import AppError


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


def media_get_for_owner(*, user, object_key: str, any_owner: bool = False) -> MediaObject:
    """An object (any status but deleted) of ``user`` — or of anyone when ``any_owner``."""
    queryset = MediaObject.objects.filter(object_key=str(object_key)).exclude(
        status=MediaStatus.DELETED
    )
    if not any_owner:
        queryset = queryset.filter(owner_id=user.pk)
    media = queryset.first()
    if media is None:
        raise AppError(MEDIA_OBJECT_NOT_FOUND)
    return media


def media_get_downloadable(*, user, object_key: str, any_owner: bool) -> MediaObject:
    """An uploaded object the caller may download.

    Someone else's object and an unknown key are the same 403 ``MEDIA_DOWNLOAD_DENIED``;
    only the owner learns that their own object is not uploaded (404).
    """
    media = MediaObject.objects.filter(object_key=str(object_key)).first()
    if media is None or not (any_owner or media.owner_id == user.pk):
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
