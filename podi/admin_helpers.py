"""Pieces the admin pages of several apps share: JSON shown and edited readably, and an
``AppError`` turned into what an operator reads (a form error or a message)."""

from __future__ import annotations

import json

from django import forms

from podi.errors import AppError


def pretty(value, *, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=sort_keys)


def app_error_text(exc: AppError) -> list[str]:
    """The lines an operator should read for an AppError."""
    lines = [exc.message]
    for field, msgs in (exc.details.get("fields") or {}).items():
        lines.extend(f"{field}: {m}" for m in msgs)
    for extra in exc.details.get("errors") or []:
        if extra not in exc.message:
            lines.append(extra)
    return lines


def as_form_error(exc: AppError) -> forms.ValidationError:
    return forms.ValidationError(app_error_text(exc))


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows its value indented and says where the JSON is broken."""

    widget = forms.Textarea(
        attrs={"rows": 14, "cols": 100, "style": "font-family:monospace", "spellcheck": "false"}
    )

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return pretty(value)

    def to_python(self, value):
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from None
