"""What other apps call: media_store_output, media_open, signed_download_url, the selector."""

import hashlib
import io
import threading
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone

from media_app.models import MediaObject, MediaStatus
from media_app.selectors import media_get_downloadable, media_get_uploaded_for_user, media_staged
from media_app.services import (
    media_delete,
    media_discard_staged,
    media_open,
    media_publish,
    media_store_output,
    signed_download_url,
)
from media_app.storage import get_backend
from media_app.storage.base import CHUNK_SIZE
from podi.access import Principal
from podi.errors import AppError
from tests.media_app.conftest import png_bytes


class ChunkOnlyStream(io.RawIOBase):
    """A source that refuses to be read whole: every read must ask for a bounded amount."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)
        self.reads: list[int] = []

    def readable(self):
        return True

    def read(self, size=-1):
        assert size is not None and 0 < size <= CHUNK_SIZE, f"unbounded read({size})"
        self.reads.append(size)
        return self._data.read(size)


@pytest.mark.django_db
def test_store_output_streams_hashes_and_records(owner, settings):
    data = png_bytes(33, 21) + b"\0" * (3 * CHUNK_SIZE)  # trailing bytes: still a PNG header
    stream = ChunkOnlyStream(data)
    media = media_store_output(
        user_id=owner.pk,
        task_id="tsk_abc",
        filename="../9-ComfyUI_00001_.png",
        stream=stream,
        mime_type="image/png",
        size=len(data),
    )
    assert len(stream.reads) >= 4
    assert media.object_key == f"results/{owner.pk}/tsk_abc/9-ComfyUI_00001_.png"
    assert (media.status, media.purpose, media.task_id, media.owner_id) == (
        "uploaded", "output", "tsk_abc", owner.pk,
    )  # fmt: skip
    assert (media.size, media.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (media.width, media.height, media.mime_type) == (33, 21, "image/png")
    assert media.uploaded_at is not None
    assert (Path(settings.MEDIA_ROOT) / media.object_key).read_bytes() == data


@pytest.mark.django_db
def test_store_output_is_idempotent_per_task_and_filename(owner):
    first = media_store_output(
        user_id=owner.pk, task_id="tsk_1", filename="a.txt", stream=io.BytesIO(b"one")
    )
    untouched = ChunkOnlyStream(b"two")
    again = media_store_output(
        user_id=owner.pk, task_id="tsk_1", filename="a.txt", stream=untouched
    )
    assert again.pk == first.pk
    assert untouched.reads == []
    assert MediaObject.objects.count() == 1
    other = media_store_output(
        user_id=owner.pk, task_id="tsk_2", filename="a.txt", stream=io.BytesIO(b"two")
    )
    assert other.pk != first.pk
    assert (first.mime_type, first.width, first.size) == ("text/plain", None, 3)


@pytest.mark.django_db
def test_store_output_detects_images_without_a_type(owner):
    media = media_store_output(
        user_id=owner.pk,
        task_id="t",
        filename="blob",
        stream=io.BytesIO(png_bytes(4, 9)),
        mime_type="application/octet-stream",
    )
    assert (media.mime_type, media.width, media.height) == ("image/png", 4, 9)


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_of_one_output_leave_one_row(owner):
    results, errors = [], []

    def write(payload):
        try:
            results.append(
                media_store_output(
                    user_id=owner.pk,
                    task_id="tsk_race",
                    filename="out.txt",
                    stream=io.BytesIO(payload),
                ).pk
            )
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(b"x" * 100,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert MediaObject.objects.filter(task_id="tsk_race").count() == 1


@pytest.mark.django_db
def test_media_open_reads_uploaded_objects_only(owner):
    media = media_store_output(
        user_id=owner.pk, task_id="t", filename="in.bin", stream=io.BytesIO(b"payload")
    )
    with media_open(object_key=media.object_key) as stream:
        assert stream.read() == b"payload"
    MediaObject.objects.filter(pk=media.pk).update(status=MediaStatus.PENDING)
    with pytest.raises(AppError) as caught:
        media_open(object_key=media.object_key)
    assert caught.value.code == "MEDIA_OBJECT_NOT_FOUND"


@pytest.mark.django_db
def test_signed_download_url_local(owner, settings, anon):
    settings.PUBLIC_BASE_URL = "https://podi.example.com"
    media = media_store_output(
        user_id=owner.pk, task_id="t", filename="o.txt", stream=io.BytesIO(b"hello")
    )
    before = timezone.now()
    url, expires_at = signed_download_url(object_key=media.object_key, ttl=300)
    assert url.startswith("https://podi.example.com/media-download/")
    assert 299 <= (expires_at - before).total_seconds() <= 301
    response = anon.get(url.removeprefix("https://podi.example.com"))
    assert b"".join(response.streaming_content) == b"hello"
    assert response["Content-Disposition"] == 'attachment; filename="o.txt"'


@pytest.mark.django_db
def test_uploaded_for_user_never_says_which(owner, outsider):
    media = media_store_output(user_id=owner.pk, task_id="t", filename="x", stream=io.BytesIO(b"1"))
    assert media_get_uploaded_for_user(user=owner, object_key=media.object_key).pk == media.pk
    assert media_get_uploaded_for_user(user=owner.pk, object_key=media.object_key).pk == media.pk
    errors = []
    for user, key in ((outsider, media.object_key), (owner, "results/0/nope")):
        with pytest.raises(AppError) as caught:
            media_get_uploaded_for_user(user=user, object_key=key)
        errors.append((caught.value.code, caught.value.status, caught.value.message))
    for status in (MediaStatus.PENDING, MediaStatus.DELETED):
        MediaObject.objects.filter(pk=media.pk).update(status=status)
        with pytest.raises(AppError) as caught:
            media_get_uploaded_for_user(user=owner, object_key=media.object_key)
        errors.append((caught.value.code, caught.value.status, caught.value.message))
    assert set(errors) == {("MEDIA_OBJECT_NOT_FOUND", 404, "No such media object.")}


@pytest.mark.django_db
def test_media_delete_removes_the_file_and_marks_the_row(owner, settings):
    media = media_store_output(user_id=owner.pk, task_id="t", filename="x", stream=io.BytesIO(b"1"))
    path = Path(settings.MEDIA_ROOT) / media.object_key
    assert path.exists()
    deleted = media_delete(media=media)
    assert not path.exists()
    assert deleted.status == MediaStatus.DELETED
    assert deleted.deleted_at is not None
    assert media_delete(media=deleted).status == MediaStatus.DELETED


@pytest.mark.django_db
def test_local_backend_interface(settings):
    backend = get_backend()
    assert backend.name == "local"
    with pytest.raises(AppError) as caught:
        backend.save_stream("files/t/big.bin", io.BytesIO(b"x" * 11), mime_type="x", max_bytes=10)
    assert (caught.value.code, caught.value.status) == ("MEDIA_TOO_LARGE", 413)
    assert not backend.exists("files/t/big.bin")
    backend.save_stream("files/t/a.bin", io.BytesIO(b"aa"), mime_type="x", max_bytes=10)
    backend.save_stream("files/t/sub/b.bin", io.BytesIO(b"bbb"), mime_type="x")
    backend.save_stream("files/u/c.bin", io.BytesIO(b"c"), mime_type="x")
    listed = backend.list("files/t/")
    assert [(item.key, item.size) for item in listed] == [
        ("files/t/a.bin", 2),
        ("files/t/sub/b.bin", 3),
    ]
    assert all(item.modified is not None for item in listed)
    assert [item.key for item in backend.list("files/", limit=2)] == [
        "files/t/a.bin",
        "files/t/sub/b.bin",
    ]
    assert backend.list("nothing/") == []
    assert backend.stat("files/t/a.bin").size == 2
    assert backend.read_head("files/t/sub/b.bin", 2) == b"bb"
    with pytest.raises(AppError) as caught:
        backend.stat("../outside")
    assert caught.value.code == "MEDIA_STORAGE_ERROR"


@pytest.mark.django_db
def test_staged_output_is_unreachable_until_published(owner, staff, settings):
    staff_user = staff
    media = media_store_output(
        user_id=owner.pk,
        task_id="tsk_s",
        filename="a.png",
        stream=io.BytesIO(png_bytes()),
        mime_type="image/png",
        staged=True,
    )
    assert (media.status, media.uploaded_at) == (MediaStatus.STAGED, None)
    path = Path(settings.MEDIA_ROOT) / media.object_key
    assert path.exists()
    # Not downloadable (the same refusal as an unknown key), not an input, not openable.
    with pytest.raises(AppError) as denied:
        media_get_downloadable(Principal.for_user(owner), media.object_key)
    assert denied.value.code == "MEDIA_DOWNLOAD_DENIED"
    with pytest.raises(AppError) as denied_staff:
        media_get_downloadable(Principal.for_user(staff_user), media.object_key)
    assert denied_staff.value.code == "MEDIA_DOWNLOAD_DENIED"
    with pytest.raises(AppError):
        media_get_uploaded_for_user(user=owner, object_key=media.object_key)
    with pytest.raises(AppError):
        media_open(object_key=media.object_key)
    # Storing it again (a resumed run) keeps it staged.
    again = media_store_output(
        user_id=owner.pk, task_id="tsk_s", filename="a.png", stream=io.BytesIO(b"x"), staged=True
    )
    assert (again.pk, again.status) == (media.pk, MediaStatus.STAGED)

    assert media_publish(object_keys=[media.object_key]) == 1
    assert media_publish(object_keys=[media.object_key]) == 0
    published = MediaObject.objects.get(pk=media.pk)
    assert published.status == MediaStatus.UPLOADED and published.uploaded_at is not None
    assert media_get_downloadable(Principal.for_user(owner), media.object_key)
    # Discarding touches only staged objects.
    assert media_discard_staged(object_keys=[media.object_key]) == 0
    assert path.exists()


@pytest.mark.django_db
def test_discarding_staged_objects_removes_file_and_row(owner, settings):
    media = media_store_output(
        user_id=owner.pk, task_id="tsk_d", filename="a.txt", stream=io.BytesIO(b"1"), staged=True
    )
    assert media_staged() == [(media.object_key, "tsk_d", media.created_at)]
    assert media_discard_staged(object_keys=[media.object_key, "results/1/none/x"]) == 1
    assert not (Path(settings.MEDIA_ROOT) / media.object_key).exists()
    assert not MediaObject.objects.filter(object_key=media.object_key).exists()
    assert media_staged() == []
