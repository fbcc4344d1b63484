"""Validation of what operators type: executor configs, workflow definitions, params schemas.

Used by the services; every failure is an ``AppError`` with a stable code and a readable reason.

Media params: a params-schema property is an *image/media* param when it carries
``"x-podi-media": true`` (canonical; ``"format": "media-object"`` is accepted as an alias). Such a
param is a string (the file name ComfyUI gets after PODI uploads the task's input, or a URL for
Coze/HTTP). A ComfyUI placeholder that feeds a loader's file input (``LoadImage.image`` and the
like) must be marked so, or the version is refused.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from integrations.error_codes import WORKFLOW_INVALID
from integrations.models import ExecutorKind
from integrations.templating import (
    PLACEHOLDER,
    SYSTEM_PLACEHOLDERS,
    SYSTEM_PREFIX,
    placeholders_in,
    placeholders_in_keys,
)
from podi.crypto import decrypt_secret, encrypt_secret, mask_secret
from podi.errors import AppError, validation_error

COMFYUI_EXPORT_HINT = (
    "In ComfyUI enable Dev mode (Settings → Comfy → Dev Mode, 'Enable dev mode options') and use "
    "Workflow → Export (API) — the API format is an object of nodes keyed by id, each with "
    "class_type and inputs."
)

MEDIA_FLAG = "x-podi-media"
MEDIA_FORMAT = "media-object"

# Loader inputs that take a file name uploaded to ComfyUI's input folder.
MEDIA_INPUT_NAMES = frozenset({"image", "video", "audio", "file", "mask"})

# ------------------------------------------------------------------------------ executor config

_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}
_COMMON_CONFIG: dict[str, Any] = {
    "connect_timeout": {**_TIMEOUT, "maximum": 600, "description": "seconds"},
    "read_timeout": {**_TIMEOUT, "description": "seconds"},
    "headers": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "extra headers sent on every call",
    },
    "health_url": {"type": "string", "maxLength": 500},
}
CONFIG_SCHEMAS: dict[str, dict] = {
    ExecutorKind.COMFYUI: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **_COMMON_CONFIG,
            "api_prefix": {"type": "string", "pattern": r"^(/[A-Za-z0-9_.-]+)*$"},
            "lost_after": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 3600,
                "description": "seconds a prompt may be missing from queue and history",
            },
            "poll_every": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
            "confirm_stale": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 3600,
                "description": "seconds a /history confirmation may take before polling",
            },
        },
    },
    ExecutorKind.COZE: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **_COMMON_CONFIG,
            "base_url": {"type": "string", "maxLength": 500},
            "mode": {"enum": ["sync", "async", "stream"]},
            "poll_interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
            "bot_id": {"type": "string", "maxLength": 64},
            "app_id": {"type": "string", "maxLength": 64},
            "health_probe": {"type": "boolean"},
        },
    },
    ExecutorKind.HTTP: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **_COMMON_CONFIG,
            "auth_header": {"type": "string", "minLength": 1, "maxLength": 100},
            "auth_scheme": {"type": "string", "maxLength": 50},
            "result_path": {"type": "string", "maxLength": 200},
            "poll": {
                "type": "object",
                "additionalProperties": False,
                "required": ["url"],
                "properties": {
                    "url": {"type": "string", "minLength": 1, "maxLength": 500},
                    "interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
                    "max_polls": {"type": "integer", "minimum": 1},
                    "status_path": {"type": "string", "maxLength": 200},
                    "success_values": {"type": "array", "items": {"type": "string"}},
                    "failure_values": {"type": "array", "items": {"type": "string"}},
                    "result_path": {"type": "string", "maxLength": 200},
                },
            },
        },
    },
}


def _path_of(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts)


def _schema_errors(validator: Draft202012Validator, instance: Any, prefix: str) -> dict:
    fields: dict[str, list[str]] = {}
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        path = _path_of(error)
        if error.validator == "additionalProperties" and isinstance(instance, dict):
            extras = [key for key in instance if key not in (error.schema.get("properties") or {})]
            for key in extras:
                name = ".".join(filter(None, [prefix, path, key]))
                fields.setdefault(name, []).append("Unknown setting.")
            continue
        name = ".".join(filter(None, [prefix, path])) or prefix or "nonFieldErrors"
        fields.setdefault(name, []).append(error.message)
    return fields


def check_http_url(value: str, field: str) -> str:
    value = (value or "").strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise validation_error({field: ["Must be an http(s) URL with a host."]})
    return value.rstrip("/")


def clean_executor_config(kind: str, config: Any) -> dict:
    """Validate an executor's per-kind config; unknown keys and wrong types are refused."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise validation_error({"config": ["Must be an object."]})
    schema = CONFIG_SCHEMAS[kind]
    fields = _schema_errors(Draft202012Validator(schema), config, "config")
    if fields:
        raise validation_error(fields)
    if kind == ExecutorKind.COZE and config.get("base_url"):
        config = {**config, "base_url": check_http_url(config["base_url"], "config.base_url")}
    health_url = config.get("health_url")
    if health_url and "://" in health_url:
        check_http_url(health_url, "config.health_url")
    return config


# ------------------------------------------------------------------------------ params schema


def is_media_param(prop: Any) -> bool:
    return isinstance(prop, dict) and (
        prop.get(MEDIA_FLAG) is True or prop.get("format") == MEDIA_FORMAT
    )


def media_params(schema: dict) -> list[str]:
    """Names of the media params of a params schema, in declaration order."""
    props = (schema or {}).get("properties") or {}
    return [name for name, prop in props.items() if is_media_param(prop)]


def _invalid(reason: str, message: str, **details: Any) -> AppError:
    return AppError(WORKFLOW_INVALID, message, details={"reason": reason, **details})


def _load_json(value: Any, what: str) -> Any:
    if isinstance(value, str | bytes | bytearray):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _invalid(
                "not_json", f"The {what} is not valid JSON: {exc}.", field=what
            ) from None
    return value


def clean_params_schema(schema: Any) -> dict:
    schema = _load_json(schema, "paramsSchema")
    if schema is None or schema == {}:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise _invalid("invalid_schema", "The params schema must be a JSON object.")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise _invalid(
            "invalid_schema",
            f"The params schema is not a valid JSON Schema (Draft 2020-12) at {where}: "
            f"{exc.message}",
        ) from None
    if schema.get("type", "object") != "object":
        raise _invalid(
            "invalid_schema", 'The params schema must describe an object ("type": "object").'
        )
    props = schema.get("properties", {})
    if not isinstance(props, dict):
        raise _invalid("invalid_schema", "The params schema's properties must be an object.")
    for name, prop in props.items():
        if name.split(".")[0] == "podi":
            raise _invalid("invalid_schema", f"Param name {name!r} is reserved.")
        if is_media_param(prop) and prop.get("type", "string") != "string":
            raise _invalid(
                "invalid_schema",
                f"Media param {name!r} must be a string (the uploaded file's name or a URL).",
            )
    return schema


# ------------------------------------------------------------------------------ definitions


def _check_comfyui(definition: Any) -> None:
    if isinstance(definition, dict) and (
        isinstance(definition.get("nodes"), list)
        or "links" in definition
        or "last_node_id" in definition
    ):
        raise _invalid(
            "ui_format",
            "This is ComfyUI's UI (workflow) export, not the API format. " + COMFYUI_EXPORT_HINT,
            hint=COMFYUI_EXPORT_HINT,
        )
    if not isinstance(definition, dict) or not definition:
        raise _invalid(
            "not_api_format",
            "A ComfyUI definition must be a non-empty object of nodes. " + COMFYUI_EXPORT_HINT,
            hint=COMFYUI_EXPORT_HINT,
        )
    if isinstance(definition.get("prompt"), dict) and "class_type" not in definition["prompt"]:
        raise _invalid(
            "not_api_format",
            'Give the API-format graph itself, not a /prompt request body ({"prompt": …}).',
        )
    errors: list[str] = []
    for node_id, node in definition.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            errors.append(f"Node {node_id!r} has no class_type.")
            continue
        if "{{" in node["class_type"]:
            errors.append(f"Node {node_id!r}: placeholders are not allowed in class_type.")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            errors.append(f"Node {node_id!r}: inputs must be an object.")
            continue
        for name, value in inputs.items():
            if (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], str)
                and isinstance(value[1], int)
                and value[0] not in definition
            ):
                errors.append(
                    f"Node {node_id!r} input {name!r} links to missing node {value[0]!r}."
                )
    if errors:
        reason = "not_api_format" if any("class_type." in e for e in errors) else "bad_graph"
        hint = f" {COMFYUI_EXPORT_HINT}" if reason == "not_api_format" else ""
        raise _invalid(reason, errors[0] + hint, errors=errors)


def _check_coze(definition: Any) -> None:
    if not isinstance(definition, dict):
        raise _invalid(
            "bad_definition", 'A Coze definition is {"workflowId": "…", "parameters": {…}}.'
        )
    workflow_id = definition.get("workflowId")
    if not isinstance(workflow_id, str) or not workflow_id.strip() or "{{" in workflow_id:
        raise _invalid(
            "bad_definition", "A Coze definition needs a literal workflowId (the published id)."
        )
    if not isinstance(definition.get("parameters", {}), dict):
        raise _invalid("bad_definition", "A Coze definition's parameters must be an object.")
    extra = set(definition) - {"workflowId", "parameters", "botId", "appId", "ext"}
    if extra:
        raise _invalid("bad_definition", f"Unknown key(s) in a Coze definition: {sorted(extra)}.")


HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _check_http(definition: Any) -> None:
    if not isinstance(definition, dict):
        raise _invalid(
            "bad_definition",
            'An HTTP definition is a request template {"method", "path" or "url", "headers", '
            '"query", "body"}.',
        )
    method = definition.get("method", "POST")
    if method not in HTTP_METHODS:
        raise _invalid("bad_definition", f"method must be one of {', '.join(HTTP_METHODS)}.")
    target = definition.get("path", definition.get("url"))
    if not isinstance(target, str) or not target:
        raise _invalid("bad_definition", "An HTTP definition needs a path (or an absolute url).")
    for key in ("headers", "query"):
        if not isinstance(definition.get(key, {}), dict):
            raise _invalid("bad_definition", f"{key} must be an object.")
    extra = set(definition) - {"method", "path", "url", "headers", "query", "body", "result"}
    if extra:
        raise _invalid("bad_definition", f"Unknown key(s) in an HTTP definition: {sorted(extra)}.")


def media_placeholders(definition: dict) -> set[str]:
    """Placeholders that are the whole value of a ComfyUI loader's file input."""

    found: set[str] = set()
    for node in definition.values():
        if not isinstance(node, dict):
            continue
        class_type = str(node.get("class_type", ""))
        if not class_type.lower().startswith("load"):
            continue
        for name, value in (node.get("inputs") or {}).items():
            if name in MEDIA_INPUT_NAMES and isinstance(value, str):
                match = PLACEHOLDER.fullmatch(value)
                if match and not match.group(1).startswith(SYSTEM_PREFIX):
                    found.add(match.group(1))
    return found


def clean_outputs(kind: str, definition: Any, outputs: Any) -> list[str]:
    if outputs in (None, ""):
        return []
    outputs = _load_json(outputs, "outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, str | int) for o in outputs):
        raise _invalid("bad_outputs", "outputs must be a list of node ids.")
    outputs = [str(o) for o in outputs]
    if kind == ExecutorKind.COMFYUI:
        unknown = [o for o in outputs if o not in definition]
        if unknown:
            raise _invalid(
                "bad_outputs", f"Declared output node(s) not in the graph: {', '.join(unknown)}."
            )
    return outputs


def clean_definition(kind: str, definition: Any, schema: dict) -> Any:
    """Validate a definition against its kind and its params schema; return it parsed."""
    definition = _load_json(definition, "definition")
    {
        ExecutorKind.COMFYUI: _check_comfyui,
        ExecutorKind.COZE: _check_coze,
        ExecutorKind.HTTP: _check_http,
    }[kind](definition)

    in_keys = placeholders_in_keys(definition)
    if in_keys:
        raise _invalid(
            "placeholder_in_key",
            f"Placeholders are filled in values only, not in keys: {', '.join(sorted(in_keys))}.",
        )
    used = placeholders_in(definition)
    system_used = {name for name in used if name.startswith(SYSTEM_PREFIX)}
    unknown_system = sorted(system_used - SYSTEM_PLACEHOLDERS)
    declared = set((schema.get("properties") or {}).keys())
    params_used = used - system_used
    undeclared = sorted(params_used - declared)
    unused = sorted(declared - params_used)
    errors = []
    if unknown_system:
        errors.append(
            f"Unknown system placeholder(s): {', '.join(unknown_system)} (known: "
            f"{', '.join(sorted(SYSTEM_PLACEHOLDERS))})."
        )
    if undeclared:
        errors.append(
            "Placeholder(s) not declared in the params schema: "
            + ", ".join(f"{{{{{n}}}}}" for n in undeclared)
            + "."
        )
    if unused:
        errors.append(f"Declared param(s) not used by the definition: {', '.join(unused)}.")
    if errors:
        reason = (
            "unknown_system_placeholder"
            if unknown_system
            else "undeclared_placeholder"
            if undeclared
            else "unused_param"
        )
        raise _invalid(
            reason,
            " ".join(errors),
            errors=errors,
            undeclared=undeclared,
            unused=unused,
        )
    if kind == ExecutorKind.COMFYUI:
        props = schema.get("properties") or {}
        unmarked = sorted(
            n for n in media_placeholders(definition) if not is_media_param(props.get(n))
        )
        if unmarked:
            raise _invalid(
                "media_param_unmarked",
                f"Param(s) {', '.join(unmarked)} feed a loader's file input: mark them "
                f'"{MEDIA_FLAG}": true in the params schema.',
                unmarked=unmarked,
            )
    return definition


# ------------------------------------------------------------------------------ secrets in config
#
# Executor headers often carry credentials, so every header value is stored Fernet-encrypted
# (``podi.crypto``) under ``config["headers_encrypted"]`` and never returned: reads show each
# value masked, and a config sent back with a masked value keeps the stored one.

HEADERS_SEALED = "headers_encrypted"


def config_unsealed(config: dict | None) -> dict:
    """The config as the operator wrote it: plain ``headers``, no sealed field. Server-side only."""

    plain = dict(config or {})
    sealed = plain.pop(HEADERS_SEALED, None)
    if sealed:
        plain["headers"] = json.loads(decrypt_secret(sealed))
    return plain


def config_sealed(config: dict) -> dict:
    """A cleaned config ready to store: its ``headers`` encrypted."""

    stored = {key: value for key, value in config.items() if key not in ("headers", HEADERS_SEALED)}
    headers = config.get("headers")
    if headers:
        stored[HEADERS_SEALED] = encrypt_secret(json.dumps(headers, sort_keys=True))
    return stored


def executor_headers(config: dict | None) -> dict[str, str]:
    """The extra headers to send on every call to an executor with this stored config."""
    headers = config_unsealed(config).get("headers") or {}
    return {str(key): str(value) for key, value in headers.items()}


def config_for_display(config: dict) -> dict:
    """The config with every header value masked (stored encrypted, never shown)."""

    plain = config_unsealed(config)
    headers = plain.get("headers")
    if not isinstance(headers, dict):
        return plain
    return {**plain, "headers": {k: mask_secret(str(v)) or "…" for k, v in headers.items()}}


def config_keep_masked(old: dict, new: dict) -> dict:
    """A config sent back with masked header values keeps the stored ones (``old`` is the
    stored config, sealed or not)."""

    old_headers = config_unsealed(old).get("headers") or {}
    new_headers = (new or {}).get("headers")
    if not isinstance(new_headers, dict) or not isinstance(old_headers, dict):
        return new
    kept = {
        k: old_headers[k]
        if k in old_headers and v == (mask_secret(str(old_headers[k])) or "…")
        else v
        for k, v in new_headers.items()
    }
    return {**new, "headers": kept}
