"""What the agents' service modules share: ISO times and bounded JSON from agents."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from podi.errors import validation_error

SOURCE_PODI, SOURCE_AGENT = "podi", "agent"
MAX_JSON_BYTES = 32 * 1024


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def bounded_json(value: Any, field: str, *, must_be_object: bool = False) -> Any:
    """What agents send to be stored (metrics, payloads): JSON, an object when asked, ≤ 32 KB."""
    if must_be_object and value is not None and not isinstance(value, dict):
        raise validation_error({field: ["Must be an object."]})
    try:
        size = len(json.dumps(value, separators=(",", ":")).encode())
    except (TypeError, ValueError):
        raise validation_error({field: ["Must be JSON."]}) from None
    if size > MAX_JSON_BYTES:
        raise validation_error({field: [f"At most {MAX_JSON_BYTES // 1024} KB of JSON."]})
    return value
