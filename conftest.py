"""Root test configuration: a throwaway database per run, on SQLite (a file) or PostgreSQL."""

import os
import secrets

import pytest
from django.conf import settings


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):

    db = settings.DATABASES["default"]
    # The in-process suite runs without the PostgreSQL connection pool: Django's test client never
    # closes a thread's connection (by design, for test transactions), so every thread a test
    # starts would keep a pooled connection for good and the pool would run dry. The pool itself
    # is tested through real `manage.py up` processes (tests/platform/).
    if db["OPTIONS"].pop("pool", None):
        db["CONN_MAX_AGE"] = 0
    if db["ENGINE"].endswith("sqlite3"):
        # A file, not :memory:, so live-server and worker threads share it like production.
        db["TEST"]["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
    else:
        db["TEST"]["NAME"] = f"test_{db['NAME']}_{os.getpid()}_{secrets.token_hex(3)}"[:63]
