"""Storage backends (local, oss, s3) behind one small interface, chosen by STORAGE_BACKEND.

``get_backend()`` returns the configured :class:`~media_app.storage.base.MediaBackend`; it is
built once per process and rebuilt when a storage setting changes (tests override them).
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from media_app.storage.base import MediaBackend

_PREFIXES = ("STORAGE", "MEDIA_", "OSS_", "S3_", "PUBLIC_BASE_URL", "UPLOAD_TOKEN")


@functools.cache
def get_backend() -> MediaBackend:
    kind = settings.STORAGE_BACKEND
    if kind == "oss":
        from media_app.storage.oss import OssBackend

        return OssBackend()
    if kind == "s3":
        from media_app.storage.s3 import S3Backend

        return S3Backend()
    from media_app.storage.local import LocalBackend

    return LocalBackend()


@receiver(setting_changed)
def _storage_setting_changed(*, setting: str, **kwargs) -> None:
    if setting.startswith(_PREFIXES):
        get_backend.cache_clear()


__all__ = ["MediaBackend", "get_backend"]
