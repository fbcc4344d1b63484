"""Moved to ``podi.urlguard``; kept as an alias while callers migrate."""

from podi.urlguard import url_refusal, validate_callback_url  # noqa: F401
