"""The JSON body parser: size, depth and NUL checks before any view sees the data.

Bodies over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` answer 413 ``PAYLOAD_TOO_LARGE``; bodies nested
deeper than ``MAX_JSON_DEPTH`` or holding a NUL character (PostgreSQL stores neither in text nor
in jsonb) answer 400 ``VALIDATION_ERROR``. Nothing here recurses, so no input can exhaust the
stack.
"""

from __future__ import annotations

import codecs
import json

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.settings import api_settings
from rest_framework.utils import json as strict_json

from podi.errors import too_large, validation_error

MAX_JSON_DEPTH = 64


def check_json_value(value, *, field: str = "body") -> None:
    """Refuse nesting deeper than ``MAX_JSON_DEPTH`` and NUL characters, iteratively."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise validation_error({field: ["NUL characters (\\u0000) are not allowed."]})
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise validation_error({field: [f"Nested deeper than {MAX_JSON_DEPTH} levels."]})
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        else:
            stack.extend((child, depth + 1) for child in item)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1 if limit is not None else -1) if stream is not None else b""
        if limit is not None and len(raw) > limit:
            raise too_large()
        try:
            text = codecs.decode(raw, encoding)
            data = strict_json.loads(text) if api_settings.STRICT_JSON else json.loads(text)
        except RecursionError:
            raise validation_error(
                {"body": [f"Nested deeper than {MAX_JSON_DEPTH} levels."]}
            ) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        check_json_value(data)
        return data
