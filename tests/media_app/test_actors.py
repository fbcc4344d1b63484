from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

import media_app.actors  # noqa: F401 - registers the step
from media_app.models import MediaObject, MediaStatus
from media_app.services import media_upload_grant
from podi.reconcile import registered_steps
from tests.media_app.conftest import png_bytes

pytestmark = pytest.mark.django_db
DATA = png_bytes()


def grant(user, age: timedelta) -> MediaObject:
    media, _, _ = media_upload_grant(
        user=user, file_name="a.png", mime_type="image/png", file_size=len(DATA)
    )
    MediaObject.objects.filter(pk=media.pk).update(created_at=timezone.now() - age)
    return media


def write(settings, media, data):
    path = Path(settings.MEDIA_ROOT) / media.object_key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_the_sweep_settles_stale_grants_only(owner, settings):
    old = timedelta(seconds=900) + timedelta(hours=1, minutes=1)
    arrived = grant(owner, old)
    write(settings, arrived, DATA)
    never = grant(owner, old)
    wrong = grant(owner, old)
    wrong_path = write(settings, wrong, b"nope")
    fresh = grant(owner, timedelta(minutes=5))

    assert "media_app.actors.sweep_pending_uploads" in registered_steps()
    result = media_app.actors.sweep_pending_uploads()
    assert result == {"completed": 1, "expired": 1, "mismatched": 1, "failed": 0}
    statuses = dict(MediaObject.objects.values_list("pk", "status"))
    assert statuses == {
        arrived.pk: MediaStatus.UPLOADED,
        never.pk: MediaStatus.DELETED,
        wrong.pk: MediaStatus.DELETED,
        fresh.pk: MediaStatus.PENDING,
    }
    assert not wrong_path.exists()
    assert MediaObject.objects.get(pk=arrived.pk).width == 7
    assert media_app.actors.sweep_pending_uploads() == {
        "completed": 0, "expired": 0, "mismatched": 0, "failed": 0,
    }  # fmt: skip
