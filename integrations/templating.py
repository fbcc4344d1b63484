"""Filling ``{{placeholders}}`` in workflow definitions (docs/architecture.md §4, invariant 6).

The definition is walked as a JSON *structure*; JSON text is never spliced, so nothing a user or
operator types can break out of the value it lands in:

* a string that is exactly ``{{name}}`` takes the value itself, with its JSON type (number, bool,
  object…); for ComfyUI (``kind="comfyui"``) a list value is wrapped as ``{"__value__": [...]}``
  so it can never be read as a node link;
* a placeholder inside a longer string is replaced by text: strings as they are, numbers and
  bools with ``str()``, ``None`` as ``""``, objects and lists as compact JSON;
* ``{{podi.taskId}}``, ``{{podi.callbackUrl}}`` and ``{{podi.callbackToken}}`` come from ``system``
  (keys ``taskId``, ``callbackUrl``, ``callbackToken``);
* a placeholder with no value is a ``VALIDATION_ERROR`` naming it;
* substituted values are never scanned again, so a value containing ``{{…}}`` stays literal.

Placeholders are recognised in values only, never in object keys.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from podi.errors import validation_error

NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
PLACEHOLDER = re.compile(r"\{\{\s*(" + NAME + r")\s*\}\}")

SYSTEM_PREFIX = "podi."
SYSTEM_PLACEHOLDERS = frozenset({"podi.taskId", "podi.callbackUrl", "podi.callbackToken"})

_MISSING = object()


def _walk_strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_strings(value)


def placeholders_in(definition: Any) -> set[str]:
    """Every placeholder name used in the definition's values (system ones included)."""
    found: set[str] = set()
    for text in _walk_strings(definition):
        found.update(PLACEHOLDER.findall(text))
    return found


def placeholders_in_keys(definition: Any) -> set[str]:
    """Placeholders written in object keys (not supported: keys are never filled)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                found.update(PLACEHOLDER.findall(str(key)))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(definition)
    return found


def as_text(value: Any) -> str:
    """How a value reads when it is interpolated into a longer string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Filler:
    def __init__(self, values: dict[str, Any], system: dict[str, Any] | None, kind: str | None):
        self.values = values
        self.system = system or {}
        self.kind = kind
        self.missing: list[str] = []

    def lookup(self, name: str) -> Any:
        if name.startswith(SYSTEM_PREFIX):
            if name in SYSTEM_PLACEHOLDERS:
                return self.system.get(name[len(SYSTEM_PREFIX) :], _MISSING)
            return _MISSING
        return self.values.get(name, _MISSING)

    def whole(self, name: str) -> Any:
        value = self.lookup(name)
        if value is _MISSING:
            self.missing.append(name)
            return None
        value = copy.deepcopy(value)
        if self.kind == "comfyui" and isinstance(value, list):
            return {"__value__": value}
        return value

    def text(self, match: re.Match) -> str:
        name = match.group(1)
        value = self.lookup(name)
        if value is _MISSING:
            self.missing.append(name)
            return match.group(0)
        return as_text(value)

    def fill(self, node: Any) -> Any:
        if isinstance(node, str):
            whole = PLACEHOLDER.fullmatch(node)
            if whole:
                return self.whole(whole.group(1))
            if "{{" not in node:
                return node
            # re.sub never rescans what a replacement inserted: values are not re-expanded.
            return PLACEHOLDER.sub(self.text, node)
        if isinstance(node, dict):
            return {key: self.fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [self.fill(value) for value in node]
        return node


def fill_template(
    definition: Any,
    values: dict[str, Any],
    *,
    system: dict[str, Any] | None = None,
    kind: str | None = None,
) -> Any:
    """A filled deep copy of ``definition``; see the module docstring for the rules."""
    filler = _Filler(values, system, kind)
    filled = filler.fill(definition)
    if filler.missing:
        names = sorted(set(filler.missing))
        raise validation_error(
            {name: [f"No value for the placeholder {{{{{name}}}}}."] for name in names},
            message=f"No value for placeholder(s): {', '.join(names)}.",
        )
    return filled
