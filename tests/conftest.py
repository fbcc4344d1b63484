"""The cast every test can use: owner, teammate, outsider, staff, and service keys."""

from __future__ import annotations

import os

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from integrations.selectors import catalog_changed
from podi.realtime.events import register_sink, unregister_sink
from podi.services import service_key_create
from podi.throttling import reset_rate_limits

PASSWORD = "correct horse battery staple"


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.postgres``: a fault only PostgreSQL has (a server-side connection cut, say)
    runs on the PostgreSQL configuration and is deselected, not skipped, on the embedded one."""
    if os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        return
    chosen = [item for item in items if item.get_closest_marker("postgres")]
    if chosen:
        config.hook.pytest_deselected(items=chosen)
        items[:] = [item for item in items if not item.get_closest_marker("postgres")]


@pytest.fixture(autouse=True)
def _isolated_media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture(autouse=True)
def _fresh_catalog():
    """The per-process catalog cache (ADR 0018) starts empty: databases are rolled back between
    tests, and codes and ids come round again."""
    catalog_changed()
    yield
    catalog_changed()


@pytest.fixture
def queued_submits(settings):
    """Every submit leaves its task queued for a dispatch pass (ADR 0018's start at submit off):
    for tests of the queue and of the dispatch pass themselves."""
    settings.TASK_START_AT_SUBMIT = False


@pytest.fixture(autouse=True)
def _no_throttle_state():
    cache.clear()
    reset_rate_limits()
    yield


def make_user(username: str, **extra):
    return get_user_model().objects.create_user(
        username=username, email=f"{username}@example.com", password=PASSWORD, **extra
    )


@pytest.fixture
def owner(db):
    return make_user("owner")


@pytest.fixture
def teammate(db):
    return make_user("teammate")


@pytest.fixture
def outsider(db):
    return make_user("outsider")


@pytest.fixture
def staff(db):
    return make_user("staff", is_staff=True, is_superuser=True)


def access_token(user) -> str:
    return str(RefreshToken.for_user(user).access_token)


class Client(APIClient):
    """An APIClient that logs in with a bearer token and speaks JSON by default."""

    def __init__(self, token: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if token:
            self.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    def generic(self, method, path, data="", content_type="application/json", **extra):
        return super().generic(method, path, data, content_type, **extra)

    def post(self, path, data=None, format="json", **extra):
        return super().post(path, data, format=format, **extra)

    def patch(self, path, data=None, format="json", **extra):
        return super().patch(path, data, format=format, **extra)


@pytest.fixture
def anon():
    return Client()


@pytest.fixture
def client_for():
    def build(user_or_token) -> Client:
        if isinstance(user_or_token, str):
            return Client(user_or_token)
        return Client(access_token(user_or_token))

    return build


@pytest.fixture
def owner_client(owner, client_for):
    return client_for(owner)


@pytest.fixture
def staff_client(staff, client_for):
    return client_for(staff)


@pytest.fixture
def service_key(db):
    """Factory: ``service_key(scopes=[...])`` → (ServiceKey, raw key)."""

    def build(scopes=(), name="partner", user=None):
        return service_key_create(name=name, scopes=list(scopes), user=user)

    return build


@pytest.fixture
def published():
    """Every event published in this process while the test runs."""
    seen: list[dict] = []
    register_sink(seen.append)
    yield seen
    unregister_sink(seen.append)
