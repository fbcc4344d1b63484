"""Strict readers for settings that come from the environment.

A malformed value stops start-up with an ``ImproperlyConfigured`` that names the variable,
so a typo in production is found at boot, not at the first request that needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Env:
    """Reads typed values from a mapping (``os.environ`` by default)."""

    def __init__(self, source: Mapping[str, str] | None = None):
        self.source = os.environ if source is None else source

    def _raw(self, name: str) -> str | None:
        value = self.source.get(name)
        if value is None:
            return None
        return value.strip()

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self._raw(name)
        return default if value in (None, "") else value

    def required(self, name: str) -> str:
        value = self._raw(name)
        if not value:
            raise ImproperlyConfigured(f"{name} must be set")
        return value

    def bool(self, name: str, default: bool = False) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")

    def int(
        self, name: str, default: int, *, min_value: int | None = None, max_value: int | None = None
    ) -> int:
        value = self._raw(name)
        if value in (None, ""):
            return default
        try:
            number = int(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
        if min_value is not None and number < min_value:
            raise ImproperlyConfigured(f"{name} must be >= {min_value}, got {number}")
        if max_value is not None and number > max_value:
            raise ImproperlyConfigured(f"{name} must be <= {max_value}, got {number}")
        return number

    def list(self, name: str, default: list[str] | None = None) -> list[str]:
        value = self._raw(name)
        if value in (None, ""):
            return list(default or [])
        return [item.strip() for item in value.split(",") if item.strip()]

    def int_list(self, name: str, default: list[int]) -> list[int]:
        items = self.list(name)
        if not items:
            return list(default)
        try:
            numbers = [int(item) for item in items]
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must be a comma-separated list of integers, got {self._raw(name)!r}"
            ) from None
        if any(n < 0 for n in numbers):
            raise ImproperlyConfigured(f"{name} must not contain negative numbers")
        return numbers

    def rate(self, name: str, default: str) -> str:
        """A DRF throttle rate such as ``600/min``."""
        value = self.str(name, default)
        count, _, period = value.partition("/")
        if not count.isdigit() or period not in {"s", "sec", "m", "min", "h", "hour", "d", "day"}:
            raise ImproperlyConfigured(f"{name} must look like 600/min, got {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self._raw(name)
        if value in (None, ""):
            return default
        lowered = value.lower()
        if lowered not in choices:
            raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return lowered

    def url(self, name: str, schemes: tuple[str, ...], default: str | None = None) -> str | None:
        value = self._raw(name)
        if value in (None, ""):
            return default
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.hostname or parts.path):
            raise ImproperlyConfigured(
                f"{name} must be a URL with scheme {'/'.join(schemes)}, got {_redact(value)!r}"
            )
        return value

    def database(self, name: str) -> dict | None:
        """Parse ``postgres://user:pass@host:port/dbname?opt=v`` (or ``sqlite:////abs/path``)
        into a Django DATABASES entry."""
        value = self.url(name, ("postgres", "postgresql", "pgsql", "sqlite"))
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme == "sqlite":
            path = "/" + unquote(parts.path).lstrip("/")
            if parts.netloc or len(path) < 2:
                raise ImproperlyConfigured(
                    f"{name} must look like sqlite:////absolute/path.sqlite3, got {value!r}"
                )
            return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": {}}
        db_name = unquote(parts.path.lstrip("/"))
        if not db_name:
            raise ImproperlyConfigured(f"{name} must name a database, got {_redact(value)!r}")
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(f"{name} has a malformed port") from None
        options = {}
        if parts.query:
            for pair in parts.query.split("&"):
                key, _, val = pair.partition("=")
                if key:
                    options[unquote(key)] = unquote(val)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": db_name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(port or ""),
            "OPTIONS": options,
        }


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(parts.password, "***")
    return url
