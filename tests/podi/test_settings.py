import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from podi.env import Env

ROOT = Path(__file__).resolve().parents[2]


def test_values_parse_with_their_types():
    env = Env(
        {
            "FLAG": "true",
            "OFF": "0",
            "N": " 42 ",
            "ITEMS": "a, b,,c",
            "NUMS": "5,300",
            "KIND": "S3",
            "RATE": "10/min",
        }
    )
    assert env.bool("FLAG") is True
    assert env.bool("OFF") is False
    assert env.bool("MISSING", True) is True
    assert env.int("N", 1) == 42
    assert env.int("MISSING", 7) == 7
    assert env.list("ITEMS") == ["a", "b", "c"]
    assert env.int_list("NUMS", [1]) == [5, 300]
    assert env.choice("KIND", ("local", "s3"), "local") == "s3"
    assert env.rate("RATE", "1/s") == "10/min"
    assert env.str("MISSING", "x") == "x"


def test_database_url_becomes_a_django_database():
    db = Env(
        {"DATABASE_URL": "postgres://bob:p%40ss@db.internal:6543/podi?sslmode=require"}
    ).database("DATABASE_URL")
    assert db == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "podi",
        "USER": "bob",
        "PASSWORD": "p@ss",
        "HOST": "db.internal",
        "PORT": "6543",
        "OPTIONS": {"sslmode": "require"},
    }
    assert Env({}).database("DATABASE_URL") is None
    assert Env({"D": "sqlite:////srv/podi/db.sqlite3"}).database("D") == {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "/srv/podi/db.sqlite3",
        "OPTIONS": {},
    }


@pytest.mark.parametrize(
    ("method", "args", "value", "fragment"),
    [
        ("bool", ("X",), "maybe", "X must be a boolean"),
        ("int", ("X", 1), "ten", "X must be an integer"),
        ("int", ("X", 1, 0), "-3", "X must be >= 0"),
        ("int_list", ("X", [1]), "5,soon", "X must be a comma-separated list of integers"),
        ("choice", ("X", ("local", "s3"), "local"), "ftp", "X must be one of local, s3"),
        ("rate", ("X", "1/s"), "lots", "X must look like 600/min"),
        ("url", ("X", ("redis",)), "http://cache", "X must be a URL with scheme redis"),
        ("database", ("X",), "mysql://u:secret@h/db", "X must be a URL"),
        ("database", ("X",), "postgres://h:5432/", "X must name a database"),
        ("database", ("X",), "sqlite://relative.db", "X must look like sqlite:////absolute"),
    ],
)
def test_malformed_values_name_the_variable(method, args, value, fragment):
    kwargs = {}
    if method == "int" and len(args) == 3:
        args, kwargs = args[:2], {"min_value": args[2]}
    with pytest.raises(ImproperlyConfigured) as caught:
        getattr(Env({"X": value}), method)(*args, **kwargs)
    assert fragment in str(caught.value)
    assert "secret" not in str(caught.value)


def _boot(extra_env: dict, tmp_path) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL"}
    }
    env.update({"PODI_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "podi.settings"})
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('booted')"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_up_stops_on_a_malformed_variable(tmp_path):
    result = _boot({"WALLET_HOLD_TTL": "an hour"}, tmp_path)
    assert result.returncode != 0
    assert "WALLET_HOLD_TTL must be an integer" in result.stderr


def test_embedded_defaults_and_a_generated_secret_key(tmp_path):
    result = _boot({}, tmp_path)
    assert result.returncode == 0, result.stderr
    secret = (tmp_path / "secret_key").read_text()
    assert len(secret) >= 50
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"
    again = _boot({}, tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "secret_key").read_text() == secret


def test_short_secret_key_is_refused(tmp_path):
    result = _boot({"SECRET_KEY": "short"}, tmp_path)
    assert result.returncode != 0
    assert "SECRET_KEY must be at least 32 characters" in result.stderr


def test_embedded_settings_when_nothing_is_set(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'],"
        " s.DRAMATIQ_BROKER['BROKER'], s.STORAGE_BACKEND, s.DEBUG)"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL"}
    }
    env.update({"PODI_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "podi.settings"})
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
        "dramatiq.brokers.stub.StubBroker",
        "local",
        "False",
    ]
