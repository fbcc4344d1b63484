"""Fixtures for the media tests: pixels, upload helpers, a moto S3 server, OSS settings."""

from __future__ import annotations

import io
import socket
import uuid

import boto3
import moto.moto_server.werkzeug_app as moto_app
import pytest
from django.core.cache import cache
from moto.server import ThreadedMotoServer
from PIL import Image

from media_app.storage import oss_signing
from podi.throttling import reset_rate_limits


def png_bytes(width: int = 7, height: int = 5, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _fresh_media_caches():
    cache.clear()
    reset_rate_limits()
    oss_signing.clear_public_key_cache()
    yield
    oss_signing.clear_public_key_cache()


@pytest.fixture
def upload_key(client_for):
    """``upload_key(user)`` → a fresh upload key issued through the API."""

    def issue(user) -> str:
        response = client_for(user).post("/api/media/v1/upload-key", {})
        assert response.status_code == 200, response.json()
        return response.json()["uploadKey"]

    return issue


# --- S3 (moto) ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server on 127.0.0.1 (it stores uploads but checks no signature or policy)."""

    # oss2 signs with credential scope ".../oss/aliyun_v4_request"; let moto route it to S3.
    moto_app.SIGNING_ALIASES.setdefault("oss", "s3")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _bucket(moto_server: str) -> str:
    name = f"podi-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_client(moto_server):
    return boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def s3_storage(settings, moto_server):
    """STORAGE_BACKEND=s3 against moto with a fresh bucket; returns the bucket name."""
    bucket = _bucket(moto_server)
    settings.STORAGE_BACKEND = "s3"
    settings.S3_BUCKET = bucket
    settings.S3_ACCESS_KEY_ID = "test"
    settings.S3_SECRET_ACCESS_KEY = "test"
    settings.S3_ENDPOINT_URL = moto_server
    settings.S3_REGION = "us-east-1"
    settings.S3_ADDRESSING_STYLE = "path"
    return bucket


# --- OSS -----------------------------------------------------------------------------------------

OSS_AK = "LTAI5tLONGTERMKEY"
OSS_SK = "long-term-secret-never-leaves"


@pytest.fixture
def oss_storage(settings, moto_server):
    """STORAGE_BACKEND=oss with oss2 pointed at moto (path style on an IP endpoint)."""
    bucket = _bucket(moto_server)
    settings.STORAGE_BACKEND = "oss"
    settings.OSS_ACCESS_KEY = OSS_AK
    settings.OSS_SECRET_KEY = OSS_SK
    settings.OSS_ENDPOINT = moto_server
    settings.OSS_REGION = "oss-cn-hangzhou"
    settings.OSS_BUCKET = bucket
    settings.OSS_PUBLIC_DOMAIN = None
    settings.OSS_ROLE_ARN = None
    settings.OSS_TIMEOUT = 5
    settings.OSS_STS_ENDPOINT = f"http://127.0.0.1:{closed_port()}"
    settings.OSS_CALLBACK_URL = "https://podi.example.com/api/media/v1/oss-callback"
    return bucket
