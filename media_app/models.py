"""Media objects (what is or will be in storage) and per-user upload-key versions."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class MediaStatus(models.TextChoices):
    PENDING = "pending", "pending"
    STAGED = "staged", "staged"
    UPLOADED = "uploaded", "uploaded"
    DELETED = "deleted", "deleted"


class MediaPurpose(models.TextChoices):
    INPUT = "input", "input"
    OUTPUT = "output", "output"
    FILE = "file", "file"


class MediaObject(models.Model):
    """One object in the configured storage, keyed by its object key.

    ``pending`` rows are upload grants (created by ``sts``); they become ``uploaded`` when the
    OSS callback or ``complete`` has checked the stored object, and ``deleted`` when removed.
    ``staged`` rows are in storage but reachable by nobody: a task's outputs (and base64 inputs)
    until the transaction that charges (submits) the task makes them ``uploaded``; staged rows of
    a task that ended otherwise are swept (docs/adr/0011-money-holes.md).
    """

    object_key = models.CharField(max_length=1024, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="media_objects"
    )
    backend = models.CharField(max_length=8, help_text="local, oss or s3 at the time of writing.")
    bucket = models.CharField(max_length=255, blank=True)
    file_name = models.CharField(max_length=255, blank=True, help_text="As the client named it.")
    size = models.BigIntegerField(default=0, help_text="Bytes (declared while pending).")
    mime_type = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=MediaStatus.choices, default=MediaStatus.PENDING, db_index=True
    )
    purpose = models.CharField(
        max_length=16, choices=MediaPurpose.choices, default=MediaPurpose.INPUT, db_index=True
    )
    task_id = models.CharField(max_length=64, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    uploaded_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "status"], name="media_owner_status")]
        constraints = [
            models.CheckConstraint(condition=models.Q(size__gte=0), name="media_size_gte_0"),
        ]

    def __str__(self) -> str:
        return self.object_key

    @property
    def is_image(self) -> bool:
        return self.mime_type.startswith("image/")


class UploadKeyVersion(models.Model):
    """Upload keys carry the user's version; bumping it revokes every outstanding key."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="upload_key_version"
    )
    version = models.PositiveIntegerField(default=1)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.user} v{self.version}"
