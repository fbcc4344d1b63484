import re
from datetime import UTC, datetime

import pytest

from media_app.paths import (
    normalise_file_path,
    output_object_key,
    safe_filename,
    upload_object_key,
)
from podi.errors import AppError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a/b.txt", "a/b.txt"),
        ("task_1/audio.wav", "task_1/audio.wav"),
        ("a//b/./c.txt", "a/b/c.txt"),
        ("./x.png", "x.png"),
        ("数据/图片.png", "数据/图片.png"),
        ("cafe\u0301.txt", "caf\u00e9.txt"),  # NFC
        ("50%25 off.txt", "50%25 off.txt"),  # a literal percent sign is fine
        ("a..b/c", "a..b/c"),  # dots inside a name are not a parent reference
    ],
)
def test_paths_are_normalised(raw, expected):
    assert normalise_file_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("../etc/passwd", "'..' segment"),
        ("a/../../b", "'..' segment"),
        ("..", "'..' segment"),
        ("%2e%2e/secret", "'..' segment"),
        ("a/%2E%2E/b", "'..' segment"),
        ("%252e%252e/secret", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("%2fetc/passwd", "absolute path"),
        ("~/x", "absolute path"),
        ("C:/windows/x", "absolute path"),
        ("a\\b.txt", "backslash"),
        ("..\\..\\x", "backslash"),
        ("%5c..%5cx", "backslash"),
        ("a\x00b", "control character"),
        ("a%00b", "control character"),
        ("a\nb", "control character"),
        ("a\u202eb", "control character"),
        ("x" * 513, "longer than 512 characters"),
        ("a/" + "y" * 256, "a segment is longer than 255 bytes"),
        ("", "empty"),
        ("./", "empty"),
        ("dir/", "names a directory"),
        (" a/b", "a segment starts or ends with whitespace"),
    ],
)
def test_bad_paths_are_refused(raw, reason):
    with pytest.raises(AppError) as caught:
        normalise_file_path(raw)
    assert caught.value.code == "MEDIA_PATH_INVALID"
    assert caught.value.status == 400
    assert caught.value.details == {"reason": reason}


def test_prefixes_may_be_empty_or_directories():
    assert normalise_file_path("", allow_empty=True, directory=True) == ""
    assert normalise_file_path("reports/", allow_empty=True, directory=True) == "reports"


def test_upload_keys_follow_the_design_shape(settings):
    settings.MEDIA_UPLOAD_PREFIX = "test"
    now = datetime(2026, 11, 23, 23, 59, tzinfo=UTC)
    key = upload_object_key(user_id=42, mime_type="image/png", file_name="evil.html", now=now)
    assert re.fullmatch(r"test/42/20261123/[0-9a-f]{32}\.png", key)
    other = upload_object_key(user_id=42, mime_type="image/png", now=now)
    assert other != key
    assert upload_object_key(user_id=1, mime_type="image/jpeg", now=now).endswith(".jpg")
    assert upload_object_key(user_id=1, mime_type="audio/wav", now=now).endswith(".wav")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("out.png", "out.png"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("a b?.png", "a_b_.png"),
        ("..", "file"),
        ("", "file"),
        ("ＡＢＣ.png", "ABC.png"),
    ],
)
def test_output_names_are_single_safe_segments(name, expected):
    assert safe_filename(name) == expected


def test_output_keys_are_under_results_user_task():
    assert (
        output_object_key(user_id=3, task_id="tsk_abc", filename="9-ComfyUI_00001_.png")
        == "results/3/tsk_abc/9-ComfyUI_00001_.png"
    )
    assert output_object_key(user_id=3, task_id="../x", filename="../a.png") == "results/3/x/a.png"
    long = output_object_key(user_id=3, task_id="t", filename="n" * 300 + ".png")
    assert long == "results/3/t/" + "n" * 196 + ".png"
