"""Manifests and their immutable versions (content checked by
``integrations.agents.manifests.clean_manifest``)."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from integrations.agents.manifests import clean_manifest
from integrations.agents.models import Manifest, ManifestVersion
from podi.common import check_unique, model_delete, model_update, required_text
from podi.errors import validation_error


def _next_manifest_version(
    manifest: Manifest, content: dict, changelog: str, created_by
) -> ManifestVersion:
    for _attempt in range(3):
        try:
            with transaction.atomic():
                locked = Manifest.objects.select_for_update().get(pk=manifest.pk)
                latest = locked.versions.aggregate(n=Max("version"))["n"] or 0
                version = ManifestVersion.objects.create(
                    manifest=locked,
                    version=latest + 1,
                    content=content,
                    changelog=changelog or "",
                    created_by=created_by,
                )
                Manifest.objects.filter(pk=locked.pk).update(
                    latest_version=version, updated_at=timezone.now()
                )
            manifest.refresh_from_db()
            return version
        except IntegrityError:  # a concurrent writer took the number (SQLite has no row lock)
            continue
    raise validation_error({"manifest": ["Could not allocate a version number; try again."]})


def manifest_create(
    *,
    name: str,
    content: Any,
    description: str = "",
    changelog: str = "",
    created_by=None,
) -> Manifest:
    """Create a manifest and its version 1. ``content`` is validated (``clean_manifest``)."""
    name = required_text(name, field="name", max_length=100)
    check_unique(model=Manifest, field="name", value=name)
    content = clean_manifest(content)
    with transaction.atomic():
        manifest = Manifest.objects.create(name=name, description=description or "")
        _next_manifest_version(manifest, content, changelog, created_by)
    manifest.refresh_from_db()
    return manifest


def manifest_version_create(
    *, manifest: Manifest, content: Any, changelog: str = "", created_by=None
) -> ManifestVersion:
    """Validate and store the next version; the same content as the latest one makes none."""
    content = clean_manifest(content)
    latest = manifest.latest_version
    if latest is not None and latest.content == content:
        return latest
    return _next_manifest_version(manifest, content, changelog, created_by)


@transaction.atomic
def manifest_update(
    *,
    manifest: Manifest,
    content: Any = None,
    changelog: str = "",
    created_by=None,
    **changes: Any,
) -> Manifest:
    """Rename or describe a manifest; ``content`` adds a version when it differs."""
    if "name" in changes:
        changes["name"] = required_text(changes["name"], field="name", max_length=100)
        check_unique(model=Manifest, field="name", value=changes["name"], exclude_pk=manifest.pk)
    if "description" in changes:
        changes["description"] = changes["description"] or ""
    model_update(instance=manifest, fields={"name", "description"}, data=changes)
    if content is not None:
        manifest_version_create(
            manifest=manifest, content=content, changelog=changelog, created_by=created_by
        )
    manifest.refresh_from_db()
    return manifest


def manifest_delete(*, manifest: Manifest) -> None:
    """409 RESOURCE_IN_USE while an agent task refers to one of its versions."""
    model_delete(instance=manifest, what="manifest")
