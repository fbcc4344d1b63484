"""Storage backends (local, oss, s3) behind one small interface, chosen by STORAGE_BACKEND.

``get_backend()`` returns the configured :class:`~media_app.storage.base.MediaBackend`; it is
built once per process and rebuilt when a storage setting changes (tests override them).
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from media_app.storage.base import MediaBackend

_PREFIXES = ("STORAGE", "MEDIA_", "OSS_", "S3_", "PUBLIC_BASE_URL", "UPLOAD_TOKEN")
# Loaded by dotted path, like Django's own storage backends: only the chosen cloud SDK is imported.
BACKENDS = {
    "local": "media_app.storage.local.LocalBackend",
    "oss": "media_app.storage.oss.OssBackend",
    "s3": "media_app.storage.s3.S3Backend",
}


@functools.cache
def get_backend() -> MediaBackend:
    backend = import_string(BACKENDS.get(settings.STORAGE_BACKEND, BACKENDS["local"]))
    return backend()


@receiver(setting_changed)
def _storage_setting_changed(*, setting: str, **kwargs) -> None:
    if setting.startswith(_PREFIXES):
        get_backend.cache_clear()


__all__ = ["MediaBackend", "get_backend"]
