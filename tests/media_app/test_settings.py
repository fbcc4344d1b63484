"""Storage settings: seed 000's names and aliases, and fail-fast start-up."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRINT = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.STORAGE_BACKEND, s.STORAGES['default']['BACKEND'], s.OSS_ACCESS_KEY, "
    "s.OSS_SECRET_KEY, s.OSS_BUCKET, s.OSS_PUBLIC_DOMAIN, s.MEDIA_UPLOAD_PREFIX, s.S3_BUCKET, "
    "s.S3_ADDRESSING_STYLE)"
)
STORAGE_VARS = {
    name
    for name in os.environ
    if name.startswith(("OSS_", "S3_", "AWS_", "STORAGE_", "MEDIA_", "UPLOAD_TOKEN"))
}


def boot(extra: dict, tmp_path) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL"} | STORAGE_VARS
    }
    env.update({"PODI_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "podi.settings"})
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-c", PRINT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_seed_000_names_and_aliases_work(tmp_path):
    result = boot(
        {
            "STORAGE_BACKEND": "oss",
            "OSS_AK": "LTAIxxx",
            "OSS_SK": "sk-yyy",
            "OSS_ENDPOINT": "oss-cn-hangzhou.aliyuncs.com",
            "OSS_REGION": "oss-cn-hangzhou",
            "OSS_BUCKET": "pod-oss-private",
            "OSS_DOWNLOAD_DOMAIN": "https://oss-mock.local",
            "OSS_ROOT_PREFIX": "test",
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "oss",
        "media_app.storage.oss.OssStorage",
        "LTAIxxx",
        "sk-yyy",
        "pod-oss-private",
        "https://oss-mock.local",
        "test",
        "None",
        "auto",
    ]


def test_s3_with_aws_names(tmp_path):
    result = boot(
        {
            "STORAGE_BACKEND": "s3",
            "AWS_STORAGE_BUCKET_NAME": "media",
            "AWS_ACCESS_KEY_ID": "minio",
            "AWS_SECRET_ACCESS_KEY": "minio-secret",
            "AWS_S3_ENDPOINT_URL": "http://minio:9000",
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[:2] == ["s3", "media_app.storage.s3.PodiS3Storage"]
    assert words[-2:] == ["media", "path"]


def test_local_is_the_default(tmp_path):
    result = boot({}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["local", "django.core.files.storage.FileSystemStorage"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"STORAGE_BACKEND": "oss"},
            "STORAGE_BACKEND=oss needs OSS_ACCESS_KEY (or OSS_AK), OSS_SECRET_KEY (or OSS_SK), "
            "OSS_ENDPOINT, OSS_REGION, OSS_BUCKET",
        ),
        (
            {"STORAGE_BACKEND": "oss", "OSS_AK": "a", "OSS_SK": "b", "OSS_ENDPOINT": "e"},
            "STORAGE_BACKEND=oss needs OSS_REGION, OSS_BUCKET",
        ),
        (
            {"STORAGE_BACKEND": "s3", "S3_BUCKET": "b"},
            "STORAGE_BACKEND=s3 needs S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY",
        ),
        ({"UPLOAD_TOKEN_SECRET": "short"}, "UPLOAD_TOKEN_SECRET must be at least 32 characters"),
        ({"MEDIA_UPLOAD_PREFIX": "../x"}, "MEDIA_UPLOAD_PREFIX (OSS_ROOT_PREFIX) must be"),
        ({"OSS_ROOT_PREFIX": "results"}, "must not start with results/ or files/"),
        ({"OSS_STS_DURATION": "600"}, "OSS_STS_DURATION must be >= 900"),
        ({"S3_ADDRESSING_STYLE": "dns"}, "S3_ADDRESSING_STYLE must be one of auto, path, virtual"),
    ],
)
def test_start_up_fails_fast(tmp_path, extra, message):
    result = boot(extra, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
