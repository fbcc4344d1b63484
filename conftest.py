"""Root test configuration: a throwaway database per run, on SQLite (a file) or PostgreSQL."""

import os
import secrets

import pytest
from django.conf import settings


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        # A file, not :memory:, so live-server and worker threads share it like production.
        db["TEST"]["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
    else:
        db["TEST"]["NAME"] = f"test_{db['NAME']}_{os.getpid()}_{secrets.token_hex(3)}"[:63]
