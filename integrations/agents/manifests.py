"""Validation of manifest content: what an agent syncs its GPU server to.

::

    {
      "comfyui":   {"repo": "https://github.com/comfyanonymous/ComfyUI", "commit": "<7-40 hex>"},
      "plugins":   [{"name": "ComfyUI-Impact-Pack", "repo": "https://…", "commit": "<hex>"}],
      "workflows": [{"name", "url", "sha256", "size"?, "destPath"}],
      "models":    [{"name", "url", "sha256", "size", "destPath"}]
    }

Every failure is a ``VALIDATION_ERROR`` whose ``details.fields`` are keyed by the path of the bad
value (``models[2].sha256``, ``comfyui.commit``), all of them at once. URLs are http(s) with a host
and no credentials; ``sha256`` is 64 hex digits (stored lower-case); ``destPath`` is relative to
the ComfyUI directory, has no ``..``, ``.``, empty or absolute parts, no backslashes, drive letters
or control characters, and is unique across workflows and models (compared case-insensitively:
two files differing only in case collide on some file systems).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from podi.errors import validation_error

SECTIONS = ("comfyui", "plugins", "workflows", "models")
MAX_ITEMS = 1000
MAX_URL = 2000
MAX_PATH = 500
_HEX_COMMIT = re.compile(r"[0-9a-fA-F]{7,40}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")

FILE_FIELDS = {
    "models": {"name": True, "url": True, "sha256": True, "size": True, "destPath": True},
    "workflows": {"name": True, "url": True, "sha256": True, "size": False, "destPath": True},
}


class _Errors:
    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        self.fields.setdefault(path, []).append(message)


def _text(value: Any, path: str, errors: _Errors, max_length: int = 200) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.add(path, "Required: a non-empty string.")
        return None
    if len(value) > max_length:
        errors.add(path, f"At most {max_length} characters.")
        return None
    if _CONTROL.search(value):
        errors.add(path, "Control characters are not allowed.")
        return None
    return value.strip()


def _url(value: Any, path: str, errors: _Errors) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.add(path, "Required: an http(s) URL.")
        return None
    value = value.strip()
    if len(value) > MAX_URL or _CONTROL.search(value) or " " in value:
        errors.add(path, f"Not a valid URL (spaces, control characters or over {MAX_URL} chars).")
        return None
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        parts.port  # noqa: B018 — raises ValueError on a malformed port
    except ValueError:
        errors.add(path, "Not a valid URL.")
        return None
    if parts.scheme not in ("http", "https") or not hostname:
        errors.add(path, "Must be an http(s) URL with a host.")
        return None
    if parts.username or parts.password:
        errors.add(path, "Must not carry credentials; give the agent its own access instead.")
        return None
    return value


def _commit(value: Any, path: str, errors: _Errors) -> str | None:
    if not isinstance(value, str) or not _HEX_COMMIT.fullmatch(value.strip()):
        errors.add(path, "A git commit hash (7 to 40 hex digits); pin commits, not branches.")
        return None
    return value.strip().lower()


def _dest_path(value: Any, path: str, errors: _Errors) -> str | None:
    if not isinstance(value, str) or not value:
        errors.add(path, "Required: a path relative to the ComfyUI directory.")
        return None
    if len(value) > MAX_PATH:
        errors.add(path, f"At most {MAX_PATH} characters.")
        return None
    if _CONTROL.search(value) or "\\" in value:
        errors.add(path, "No control characters or backslashes; use '/'.")
        return None
    if value.startswith("/") or value.startswith("~") or _DRIVE.match(value):
        errors.add(path, "Must be relative (no leading '/', '~' or drive letter).")
        return None
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        errors.add(path, "No '..', '.' or empty path segments (it must stay inside ComfyUI).")
        return None
    if any(part != part.strip() for part in parts):
        errors.add(path, "Path segments must not start or end with spaces.")
        return None
    return value


def _unknown(item: dict, allowed, prefix: str, errors: _Errors) -> None:
    for key in item:
        if key not in allowed:
            errors.add(f"{prefix}.{key}" if prefix else str(key), "Unknown field.")


def _comfyui(value: Any, errors: _Errors) -> dict | None:
    if not isinstance(value, dict):
        errors.add("comfyui", "Required: an object {repo, commit}.")
        return None
    _unknown(value, ("repo", "commit"), "comfyui", errors)
    repo = _url(value.get("repo"), "comfyui.repo", errors)
    commit = _commit(value.get("commit"), "comfyui.commit", errors)
    return {"repo": repo, "commit": commit}


def _list(value: Any, name: str, errors: _Errors) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        errors.add(name, "Must be a list.")
        return []
    if len(value) > MAX_ITEMS:
        errors.add(name, f"At most {MAX_ITEMS} items.")
        return []
    return value


def _plugins(value: Any, errors: _Errors) -> list[dict]:
    out, seen = [], {}
    for index, item in enumerate(_list(value, "plugins", errors)):
        prefix = f"plugins[{index}]"
        if not isinstance(item, dict):
            errors.add(prefix, "Must be an object {name, repo, commit}.")
            continue
        _unknown(item, ("name", "repo", "commit"), prefix, errors)
        name = item.get("name")
        if not isinstance(name, str) or not _PLUGIN_NAME.fullmatch(name):
            errors.add(
                f"{prefix}.name",
                "The custom_nodes directory name: letters, digits, '.', '_', '-' (≤ 100).",
            )
            name = None
        elif name.casefold() in seen:
            errors.add(f"{prefix}.name", f"Duplicate of plugins[{seen[name.casefold()]}].")
        else:
            seen[name.casefold()] = index
        out.append(
            {
                "name": name,
                "repo": _url(item.get("repo"), f"{prefix}.repo", errors),
                "commit": _commit(item.get("commit"), f"{prefix}.commit", errors),
            }
        )
    return out


def _files(value: Any, section: str, errors: _Errors, dest_seen: dict[str, str]) -> list[dict]:
    fields = FILE_FIELDS[section]
    out = []
    for index, item in enumerate(_list(value, section, errors)):
        prefix = f"{section}[{index}]"
        if not isinstance(item, dict):
            errors.add(prefix, "Must be an object {name, url, sha256, size, destPath}.")
            continue
        _unknown(item, fields, prefix, errors)
        entry: dict[str, Any] = {
            "name": _text(item.get("name"), f"{prefix}.name", errors),
            "url": _url(item.get("url"), f"{prefix}.url", errors),
        }
        sha = item.get("sha256")
        if sha in (None, ""):
            errors.add(f"{prefix}.sha256", "Required: the file's SHA-256 (64 hex digits).")
        elif not isinstance(sha, str) or not _SHA256.fullmatch(sha.strip()):
            errors.add(f"{prefix}.sha256", "Must be 64 hex digits (the file's SHA-256).")
        else:
            entry["sha256"] = sha.strip().lower()
        size = item.get("size")
        if size is None:
            if fields["size"]:
                errors.add(f"{prefix}.size", "Required: the file size in bytes.")
        elif isinstance(size, bool) or not isinstance(size, int) or size < 1:
            errors.add(f"{prefix}.size", "A positive integer (bytes).")
        else:
            entry["size"] = size
        dest = _dest_path(item.get("destPath"), f"{prefix}.destPath", errors)
        if dest is not None:
            key = dest.casefold()
            if key in dest_seen:
                errors.add(f"{prefix}.destPath", f"Duplicate destPath: {dest_seen[key]} uses it.")
            else:
                dest_seen[key] = prefix
        entry["destPath"] = dest
        out.append(entry)
    return out


def clean_manifest(content: Any) -> dict:
    """The canonical manifest content, or ``VALIDATION_ERROR`` with every bad field's path."""
    if not isinstance(content, dict):
        raise validation_error(
            {"manifest": ["Must be an object {comfyui, plugins, workflows, models}."]}
        )
    errors = _Errors()
    _unknown(content, SECTIONS, "", errors)
    dest_seen: dict[str, str] = {}
    cleaned = {
        "comfyui": _comfyui(content.get("comfyui"), errors),
        "plugins": _plugins(content.get("plugins"), errors),
        "workflows": _files(content.get("workflows"), "workflows", errors, dest_seen),
        "models": _files(content.get("models"), "models", errors, dest_seen),
    }
    if errors.fields:
        count = sum(len(v) for v in errors.fields.values())
        first_path, first = next(iter(errors.fields.items()))
        raise validation_error(
            errors.fields,
            f"The manifest is not valid ({count} problem{'s' if count > 1 else ''}); "
            f"{first_path}: {first[0]}",
        )
    return cleaned


def _short(commit: str | None) -> str:
    return (commit or "—")[:12]


def _human_size(size: Any) -> str:
    if not isinstance(size, int):
        return "size unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def manifest_diff(old: dict | None, new: dict) -> list[tuple[str, str]]:
    """What changed between two manifest contents, as ``(kind, sentence)`` with kind ``added``,
    ``removed`` or ``changed``: the ComfyUI commit, plugins by name, files by ``destPath``."""
    old = old or {"comfyui": {}, "plugins": [], "workflows": [], "models": []}
    lines: list[tuple[str, str]] = []
    before, after = old.get("comfyui") or {}, new.get("comfyui") or {}
    if before.get("repo") != after.get("repo"):
        lines.append(("changed", f"ComfyUI repo {before.get('repo') or '—'} → {after.get('repo')}"))
    if before.get("commit") != after.get("commit"):
        lines.append(
            (
                "changed",
                f"ComfyUI commit {_short(before.get('commit'))} → {_short(after.get('commit'))}",
            )
        )
    old_plugins = {p["name"]: p for p in old.get("plugins") or []}
    new_plugins = {p["name"]: p for p in new.get("plugins") or []}
    for name, plugin in new_plugins.items():
        if name not in old_plugins:
            lines.append(("added", f"plugin {name} @ {_short(plugin.get('commit'))}"))
        elif old_plugins[name] != plugin:
            was = old_plugins[name]
            what = []
            if was.get("repo") != plugin.get("repo"):
                what.append(f"repo {was.get('repo')} → {plugin.get('repo')}")
            if was.get("commit") != plugin.get("commit"):
                what.append(f"commit {_short(was.get('commit'))} → {_short(plugin.get('commit'))}")
            lines.append(("changed", f"plugin {name}: {', '.join(what)}"))
    for name in sorted(old_plugins.keys() - new_plugins.keys()):
        lines.append(("removed", f"plugin {name}"))
    for section, label in (("workflows", "workflow"), ("models", "model")):
        old_files = {f["destPath"]: f for f in old.get(section) or []}
        new_files = {f["destPath"]: f for f in new.get(section) or []}
        for path, item in new_files.items():
            if path not in old_files:
                lines.append(
                    (
                        "added",
                        f"{label} {item.get('name')} → {path} ({_human_size(item.get('size'))})",
                    )
                )
            elif old_files[path] != item:
                was = old_files[path]
                what = [
                    f"{key} {was.get(key) if key != 'sha256' else _short(was.get(key))} → "
                    f"{item.get(key) if key != 'sha256' else _short(item.get(key))}"
                    for key in ("name", "url", "sha256", "size")
                    if was.get(key) != item.get(key)
                ]
                lines.append(("changed", f"{label} {path}: {'; '.join(what)}"))
        for path in sorted(old_files.keys() - new_files.keys()):
            lines.append(("removed", f"{label} {old_files[path].get('name')} at {path}"))
    return lines
