"""File API (seed 003): staff or media-scoped service keys; path normalisation; size limit."""

import hashlib
import os
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from media_app.models import MediaObject, MediaStatus

pytestmark = pytest.mark.django_db

FILES = "/api/media/v1/files"


def upload(client, path, data=b"RIFF....WAVEfmt ", name="a.wav", content_type="audio/wav"):
    return client.post(
        FILES,
        {"path": path, "file": SimpleUploadedFile(name, data, content_type=content_type)},
        format="multipart",
    )


def files_on_disk(settings) -> list[str]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(
        str(Path(dirpath, name).relative_to(root))
        for dirpath, _, names in os.walk(root)
        for name in names
    )


def test_upload_get_list_delete(staff_client, staff, settings):
    data = os.urandom(300_000)
    response = upload(staff_client, "task_1/audio.wav", data)
    assert response.status_code == 201, response.json()
    body = response.json()
    media = MediaObject.objects.get()
    assert body["path"] == "task_1/audio.wav"
    assert body["objectKey"] == "files/task_1/audio.wav"
    assert (body["size"], body["mimeType"]) == (300_000, "audio/wav")
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["url"].startswith(f"{settings.PUBLIC_BASE_URL}/media-download/")
    assert (media.owner_id, media.purpose, media.status) == (staff.pk, "file", "uploaded")
    assert files_on_disk(settings) == ["files/task_1/audio.wav"]

    got = staff_client.get(f"{FILES}/task_1/audio.wav")
    assert got.status_code == 200
    assert b"".join(got.streaming_content) == data
    assert got["Content-Type"] == "audio/wav"
    assert got["Content-Disposition"] == 'attachment; filename="audio.wav"'

    upload(staff_client, "task_1/sub/b.srt", b"1\n00:00", name="b.srt", content_type="text/plain")
    upload(staff_client, "task_2/c.txt", b"c", name="c.txt", content_type="text/plain")
    listed = staff_client.get(FILES, {"prefix": "task_1/"})
    assert listed.status_code == 200
    assert [item["path"] for item in listed.json()["items"]] == [
        "task_1/audio.wav",
        "task_1/sub/b.srt",
    ]
    assert listed.json()["total"] == 2
    assert staff_client.get(FILES).json()["total"] == 3

    deleted = staff_client.delete(f"{FILES}/task_1/audio.wav")
    assert deleted.json() == {"path": "task_1/audio.wav", "status": "deleted"}
    assert "files/task_1/audio.wav" not in files_on_disk(settings)
    again = staff_client.get(f"{FILES}/task_1/audio.wav")
    assert again.status_code == 404
    assert again.json()["code"] == "MEDIA_OBJECT_NOT_FOUND"
    assert staff_client.delete(f"{FILES}/task_1/audio.wav").status_code == 404


def test_upload_overwrites_the_same_path(staff_client):
    upload(staff_client, "x/a.bin", b"first")
    response = upload(staff_client, "x//./a.bin", b"second!")
    assert response.json()["path"] == "x/a.bin"
    media = MediaObject.objects.get()
    assert (media.size, media.sha256) == (7, hashlib.sha256(b"second!").hexdigest())


def test_seed_field_name_file_path_is_accepted(staff_client):
    response = staff_client.post(
        FILES,
        {"file_path": "t/f.wav", "file": SimpleUploadedFile("f.wav", b"w", "audio/wav")},
        format="multipart",
    )
    assert response.status_code == 201
    assert response.json()["path"] == "t/f.wav"


@pytest.mark.parametrize(
    "path",
    [
        "../escape.txt",
        "a/../../escape.txt",
        "%2e%2e/escape.txt",
        "%2E%2E%2Fescape.txt",
        "/etc/passwd",
        "C:/evil.txt",
        "a\\..\\b.txt",
        "a\x00b.txt",
        "a\x1bb.txt",
        "a/" + "x" * 600,
        "dir/",
        "",
    ],
)
def test_upload_refuses_bad_paths_and_stores_nothing(staff_client, settings, path):
    response = upload(staff_client, path)
    assert response.status_code == 400, response.json()
    assert response.json()["code"] in ("MEDIA_PATH_INVALID", "VALIDATION_ERROR")
    if "\x00" not in path:
        assert response.json()["code"] == "MEDIA_PATH_INVALID"
    assert files_on_disk(settings) == []
    assert not MediaObject.objects.exists()


@pytest.mark.parametrize(
    "url_path",
    [
        "%2e%2e/secret",
        "a/%2e%2e/%2e%2e/secret",
        "%252e%252e/secret",
        "a%00b",
        "a%5Cb",
        "x" * 600,
    ],
)
def test_get_and_delete_refuse_bad_paths(staff_client, url_path, settings):
    (Path(settings.MEDIA_ROOT)).mkdir(parents=True, exist_ok=True)
    (Path(settings.MEDIA_ROOT) / "secret").write_bytes(b"top secret")
    for method in (staff_client.get, staff_client.delete):
        response = method(f"{FILES}/{url_path}")
        assert response.status_code == 400
        assert response.json()["code"] == "MEDIA_PATH_INVALID"
    assert (Path(settings.MEDIA_ROOT) / "secret").read_bytes() == b"top secret"


def test_list_refuses_bad_prefixes(staff_client):
    response = staff_client.get(FILES, {"prefix": "../"})
    assert response.status_code == 400
    assert response.json()["code"] == "MEDIA_PATH_INVALID"


def test_size_limit(staff_client, settings):
    settings.MEDIA_MAX_UPLOAD_BYTES = 1000
    assert upload(staff_client, "ok.bin", b"x" * 1000).status_code == 201
    response = upload(staff_client, "big.bin", b"x" * 1001)
    assert response.status_code == 413
    assert response.json()["code"] == "MEDIA_TOO_LARGE"
    assert response.json()["details"] == {"maxBytes": 1000}
    huge = upload(staff_client, "huge.bin", b"x" * 200_000)
    assert huge.status_code == 413
    assert files_on_disk(settings) == ["files/ok.bin"]
    assert list(MediaObject.objects.values_list("object_key", flat=True)) == ["files/ok.bin"]


def test_file_api_is_for_staff_and_media_service_keys(
    owner_client, anon, client_for, service_key, staff_client
):
    assert anon.get(FILES).json()["code"] == "AUTH_REQUIRED"
    for response in (owner_client.get(FILES), upload(owner_client, "a.wav")):
        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"
    _, writer = service_key(scopes=["media:write"])
    assert upload(client_for(writer), "k/a.wav").status_code == 201
    _, reader = service_key(scopes=["media:read"], name="reader")
    assert client_for(reader).get(FILES).json()["total"] == 1
    assert client_for(reader).get(f"{FILES}/k/a.wav").status_code == 200
    assert upload(client_for(reader), "k/b.wav").status_code == 403
    assert client_for(reader).delete(f"{FILES}/k/a.wav").status_code == 403
    _, other = service_key(scopes=["wallet:write"], name="wallet")
    assert client_for(other).get(FILES).status_code == 403
    assert MediaObject.objects.get().status == MediaStatus.UPLOADED


def test_upload_needs_a_file(staff_client):
    response = staff_client.post(FILES, {"path": "a.txt"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert response.json()["details"]["fields"] == {
        "file": ["A file is required (multipart field `file`)."]
    }
