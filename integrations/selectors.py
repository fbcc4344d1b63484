"""Reads of the integrations catalog: abilities, their params, bindings, health requirements."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from django.conf import settings
from django.db.models import Exists, JSONField, OuterRef, Prefetch, Q, QuerySet, Subquery
from jsonschema import Draft202012Validator

from integrations import error_codes as codes
from integrations.executors.base import HealthRequirements
from integrations.executors.comfyui.client import node_classes_of
from integrations.models import (
    Ability,
    Executor,
    ExecutorKind,
    HealthStatus,
    NodeInventory,
    Preset,
    VendorApiKey,
    Workflow,
    WorkflowBinding,
    WorkflowVersion,
)
from integrations.templating import fill_template
from integrations.validation import media_params
from podi.common import get_or_error
from podi.errors import AppError, validation_error

EMPTY_SCHEMA: dict = {"type": "object", "properties": {}}


class _CatalogCache:
    """What submits and dispatch passes read of the catalog, kept per process for
    ``CATALOG_CACHE_SECONDS``: an active ability with its bindings, an ability's bindings.

    A change saved through the ORM in this process (console, admin API, services) clears it at
    once (``catalog_changed``, connected to the catalog models' save and delete signals);
    another process sees it within ``CATALOG_CACHE_SECONDS``. Executor capacity and health are
    never taken from here: every claim re-checks them in its guarded update (ADR 0018). Entries
    are shared between threads and read-only.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[float, Any]] = {}

    def get(self, key: tuple, load):
        ttl = settings.CATALOG_CACHE_SECONDS
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        value = load()
        if ttl > 0:
            with self._lock:
                self._entries[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_catalog = _CatalogCache()


def catalog_changed(**_: Any) -> None:
    """Forget this process's cached catalog (a signal receiver; also callable directly)."""
    _catalog.clear()


def ability_get_active(*, code: str) -> Ability:
    """The active ability ``code`` with what a submit needs: its bindings (ordered, with
    versions and executors) and its base preset's params. Two statements, or none while this
    process has it cached (``_CatalogCache``). Callers treat it as read-only."""
    ability = _catalog.get(("active", code), lambda: _ability_load_active(code))
    if ability is None:
        raise AppError(codes.ABILITY_NOT_FOUND, f"No active ability {code!r}.")
    return ability


def _ability_load_active(code: str) -> Ability | None:
    base_params = Preset.objects.filter(ability=OuterRef("pk"), is_base=True).values("params")
    ability = (
        Ability.objects.filter(code=code, status=Ability.Status.ACTIVE)
        .annotate(base_preset_params=Subquery(base_params[:1], output_field=JSONField()))
        .prefetch_related(_bindings_prefetch())
        .first()
    )
    return ability


def abilities_active() -> QuerySet[Ability]:
    return Ability.objects.filter(status=Ability.Status.ACTIVE).prefetch_related(
        _bindings_prefetch()
    )


def _bindings_prefetch() -> Prefetch:
    return Prefetch(
        "bindings",
        queryset=WorkflowBinding.objects.select_related(
            "workflow_version", "workflow__active_version", "executor"
        ).order_by("-priority", "id"),
        to_attr="ordered_bindings",
    )


def with_ordered_bindings(queryset: QuerySet[Ability]) -> QuerySet[Ability]:
    """Prefetch what ``ability_params_schema`` needs, for lists (no query per row)."""
    return queryset.prefetch_related(_bindings_prefetch())


def _ordered_bindings(ability: Ability) -> list[WorkflowBinding]:
    cached = getattr(ability, "ordered_bindings", None)
    if cached is not None:
        return cached
    return list(
        ability.bindings.select_related(
            "workflow_version", "workflow__active_version", "executor"
        ).order_by("-priority", "id")
    )


def ability_schema_version(ability: Ability) -> WorkflowVersion | None:
    """The workflow version whose params schema is the ability's: the resolved version of its
    highest-priority enabled binding (an enabled executor preferred), else of any binding."""
    bindings = _ordered_bindings(ability)
    ranked = (
        [b for b in bindings if b.enabled and b.executor.enabled]
        + [b for b in bindings if b.enabled and not b.executor.enabled]
        + [b for b in bindings if not b.enabled]
    )
    for binding in ranked:
        version = binding.resolved_version()
        if version is not None:
            return version
    return None


def ability_params_schema(ability: Ability) -> dict:
    """The ability's params schema (from the bound active version); an empty object schema
    when nothing is bound yet."""
    version = ability_schema_version(ability)
    if version is None:
        return copy.deepcopy(EMPTY_SCHEMA)
    return copy.deepcopy(version.params_schema or EMPTY_SCHEMA)


def ability_media_params(ability: Ability) -> list[str]:
    """Names of the ability's media params (``"x-podi-media": true``), in schema order; the
    task's inputs fill them in this order."""
    return media_params(ability_params_schema(ability))


def _schema_defaults(schema: dict) -> dict:
    return {
        name: copy.deepcopy(prop["default"])
        for name, prop in (schema.get("properties") or {}).items()
        if isinstance(prop, dict) and "default" in prop
    }


def _allows_extra(schema: dict) -> bool:
    extra = schema.get("additionalProperties", False)
    return extra is not False


def _error_path(error) -> str:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = next((n for n in error.validator_value if n not in error.instance), None)
        if missing is not None:
            path.append(missing)
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "params"


def params_validate(*, schema: dict, params: dict, partial: bool = False) -> dict:
    """Validate params against a params schema (Draft 2020-12). Unknown params are refused
    unless the schema sets ``additionalProperties``. ``partial`` skips ``required`` (presets)."""
    if not isinstance(params, dict):
        raise validation_error({"params": ["Must be an object."]})
    fields: dict[str, list[str]] = {}
    props = schema.get("properties") or {}
    if not _allows_extra(schema):
        for name in params:
            if name not in props:
                fields.setdefault(str(name), []).append("Unknown parameter.")
    check = dict(schema)
    if partial:
        check.pop("required", None)
    if not _allows_extra(schema):
        check.pop("additionalProperties", None)  # reported above, once per unknown name
    validator = Draft202012Validator(check)
    for error in sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path)):
        fields.setdefault(_error_path(error), []).append(error.message)
    if fields:
        raise validation_error(fields)
    return params


def _preset_of(ability: Ability, preset: Any) -> Preset | None:
    if preset in (None, ""):
        return None
    if isinstance(preset, Preset):
        if preset.ability_id != ability.pk:
            raise validation_error({"preset": ["This preset belongs to another ability."]})
        return preset
    query = ability.presets.all()
    if isinstance(preset, int) or (isinstance(preset, str) and preset.isdigit()):
        found = query.filter(pk=int(preset)).first() or query.filter(name=str(preset)).first()
    else:
        found = query.filter(name=str(preset)).first()
    if found is None:
        raise validation_error({"preset": [f"No preset {preset!r} for this ability."]})
    return found


def ability_validate_params(
    *,
    ability: Ability,
    params: dict,
    preset: Any = None,
    version: WorkflowVersion | None = None,
) -> dict:
    """The params a task runs with: schema defaults ← base preset ← ability.defaults ← preset ←
    params, validated against the ability's schema (or ``version``'s, when given: a binding
    pinned to another version). ``preset`` is a Preset, its id or its name. Errors are
    VALIDATION_ERROR with ``details.fields`` keyed by the param path."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise validation_error({"params": ["Must be an object."]})
    if version is not None:
        schema = copy.deepcopy(version.params_schema or EMPTY_SCHEMA)
    else:
        schema = ability_params_schema(ability)
    chosen = _preset_of(ability, preset)
    if hasattr(ability, "base_preset_params"):  # fetched with the ability (ability_get_active)
        base_params = ability.base_preset_params
    else:
        base = ability.presets.filter(is_base=True).first()
        base_params = base.params if base else None
    merged: dict[str, Any] = _schema_defaults(schema)
    for layer in (
        base_params or {},
        ability.defaults or {},
        chosen.params if chosen else {},
        params,
    ):
        merged.update(copy.deepcopy(layer or {}))
    return params_validate(schema=schema, params=merged)


def bindings_for_ability(ability: Ability) -> list[WorkflowBinding]:
    """Enabled bindings whose executor is enabled and has every node class the workflow needs,
    highest priority first (from the prefetched bindings when the ability has them)."""
    cached = getattr(ability, "ordered_bindings", None)
    if cached is not None:
        return [
            b for b in cached if b.enabled and b.executor.enabled and not b.missing_node_classes
        ]
    return _bindings_load(ability.pk)


def bindings_for_ability_id(ability_id: int) -> list[WorkflowBinding]:
    """``bindings_for_ability`` by the ability's id, whatever its status, for dispatch passes:
    cached per process like ``ability_get_active`` (read-only; copy before changing one)."""
    return _catalog.get(("bindings", ability_id), lambda: _bindings_load(ability_id))


def _bindings_load(ability_id: int) -> list[WorkflowBinding]:
    return list(
        WorkflowBinding.objects.filter(ability_id=ability_id, enabled=True, executor__enabled=True)
        .filter(missing_node_classes=[])
        .select_related("workflow", "workflow__active_version", "workflow_version", "executor")
        .order_by("-priority", "id")
    )


def bindings_not_runnable() -> QuerySet[WorkflowBinding]:
    """Enabled bindings dispatch cannot use now: executor disabled or unhealthy, or node classes
    missing on it. (Disabled bindings are the operator's choice, not a fault.)"""

    return WorkflowBinding.objects.filter(enabled=True).filter(
        Q(executor__enabled=False)
        | Q(executor__health_status=HealthStatus.UNHEALTHY)
        | ~Q(missing_node_classes=[])
    )


def abilities_without_enabled_binding() -> QuerySet[Ability]:
    usable = WorkflowBinding.objects.filter(
        ability=OuterRef("pk"), enabled=True, executor__enabled=True
    )
    return Ability.objects.filter(~Exists(usable))


def executor_bound_versions(executor: Executor) -> list[WorkflowVersion]:
    versions = []
    for binding in executor.bindings.filter(enabled=True).select_related(
        "workflow__active_version", "workflow_version"
    ):
        version = binding.resolved_version()
        if version is not None:
            versions.append(version)
    return versions


def executor_health_requirements(executor: Executor) -> HealthRequirements:
    """What the workflows bound (enabled) to this executor need from it."""
    versions = executor_bound_versions(executor)
    if executor.kind == ExecutorKind.COMFYUI:
        classes: set[str] = set()
        for version in versions:
            classes |= node_classes_of(version.definition)
        return HealthRequirements(node_classes=frozenset(classes))
    if executor.kind == ExecutorKind.COZE:
        ids = {
            str(v.definition.get("workflowId"))
            for v in versions
            if isinstance(v.definition, dict) and v.definition.get("workflowId")
        }
        return HealthRequirements(workflow_ids=frozenset(ids))
    return HealthRequirements()


# ------------------------------------------------------------------------------ node classes


def node_inventories(executor_ids) -> dict[int, frozenset[str]]:
    """The node classes each ComfyUI executor answered at its last check (absent: never read)."""
    return {
        row.executor_id: frozenset(row.node_classes)
        for row in NodeInventory.objects.filter(executor_id__in=set(executor_ids))
    }


def binding_missing_nodes(
    binding: WorkflowBinding, installed: frozenset[str] | None
) -> list[str] | None:
    """Node classes the binding's resolved version needs that ``installed`` lacks; None when
    that cannot be told (not ComfyUI, no version, executor never read)."""
    version = binding.resolved_version()
    if binding.executor.kind != ExecutorKind.COMFYUI or version is None or installed is None:
        return None
    return sorted(node_classes_of(version.definition) - installed)


def binding_warnings(binding: WorkflowBinding) -> list[str]:
    """What an operator should hear when saving this binding (empty = nothing to say)."""
    where = f"{binding.ability.code} → {binding.workflow.name} @ {binding.executor.name}"
    if binding.missing_node_classes:
        return [
            f"{where}: node class(es) {', '.join(binding.missing_node_classes)} are not "
            f"installed on {binding.executor.name}; this binding will not run until they are "
            "(the executor's other bindings keep running)."
        ]
    if (
        binding.enabled
        and binding.executor.kind == ExecutorKind.COMFYUI
        and binding.nodes_checked_at is None
    ):
        return [
            f"{where}: {binding.executor.name}'s node classes are not known yet; they are "
            "checked at its next health check."
        ]
    return []


def workflow_version_warnings(version: WorkflowVersion) -> list[str]:
    """Warnings for every binding that runs ``version`` (pinned, or through the active one)."""
    bindings = (
        WorkflowBinding.objects.filter(workflow_id=version.workflow_id)
        .select_related("ability", "workflow__active_version", "workflow_version", "executor")
        .order_by("pk")
    )
    warnings: list[str] = []
    for binding in bindings:
        resolved = binding.resolved_version()
        if resolved is not None and resolved.pk == version.pk:
            warnings.extend(binding_warnings(binding))
    return warnings


# ------------------------------------------------------------------------------ fetch-or-404


def executor_get(*, executor_id: Any) -> Executor:
    return get_or_error(
        Executor.objects.prefetch_related("api_keys"), executor_id, codes.EXECUTOR_NOT_FOUND
    )


def workflow_get(*, workflow_id: Any) -> Workflow:
    return get_or_error(
        Workflow.objects.select_related("active_version"), workflow_id, codes.WORKFLOW_NOT_FOUND
    )


def workflow_version_get(*, workflow: Workflow, version: Any) -> WorkflowVersion:
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise AppError(codes.WORKFLOW_VERSION_NOT_FOUND) from None
    found = workflow.versions.filter(version=number).first()
    if found is None:
        raise AppError(codes.WORKFLOW_VERSION_NOT_FOUND)
    return found


def ability_get(*, ability_id: Any) -> Ability:
    return get_or_error(
        with_ordered_bindings(Ability.objects.all()), ability_id, codes.ABILITY_NOT_FOUND
    )


def ability_get_public(*, ability_id: Any) -> Ability:
    """An active ability by id (404 ABILITY_NOT_FOUND for inactive ones too)."""
    return get_or_error(
        with_ordered_bindings(Ability.objects.filter(status=Ability.Status.ACTIVE)),
        ability_id,
        codes.ABILITY_NOT_FOUND,
    )


def binding_get(*, binding_id: Any) -> WorkflowBinding:
    return get_or_error(
        WorkflowBinding.objects.select_related(
            "ability", "workflow_version", "workflow__active_version", "executor"
        ),
        binding_id,
        codes.BINDING_NOT_FOUND,
    )


def api_key_get(*, key_id: Any) -> VendorApiKey:
    return get_or_error(VendorApiKey.objects.all(), key_id, codes.API_KEY_NOT_FOUND)


def preset_get(*, preset_id: Any) -> Preset:
    return get_or_error(Preset.objects.select_related("ability"), preset_id, codes.PRESET_NOT_FOUND)


def binding_preview(*, binding: WorkflowBinding, params: dict | None, preset: Any = None) -> dict:
    """What a task with these params would send through this binding, without sending it:
    ``{"version", "params", "filled"}``. Raises VALIDATION_ERROR like a submit would."""

    version = binding.resolved_version()
    if version is None:
        raise AppError(codes.INVALID_WORKFLOW_OR_EXECUTOR, "The binding's workflow has no version.")
    merged = ability_validate_params(
        ability=binding.ability, params=params or {}, preset=preset, version=version
    )
    task_id = "tsk_testrun"
    system = {
        "taskId": task_id,
        "callbackUrl": f"{settings.PUBLIC_BASE_URL}/api/tasks/v1/{task_id}/complete",
        "callbackToken": "test-run-token",
    }
    filled = fill_template(version.definition, merged, system=system, kind=binding.workflow.kind)
    return {"version": version.version, "params": merged, "filled": filled}
