"""Writes of the integrations catalog. Every create/update/delete goes through here (admin API,
Django admin, ``import_workflow``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from integrations import error_codes as codes
from integrations.executors import client_for
from integrations.executors.base import ExecutorError, HealthResult
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
from integrations.selectors import (
    ability_params_schema,
    binding_missing_nodes,
    executor_health_requirements,
    node_inventories,
    params_validate,
)
from integrations.validation import (
    check_http_url,
    clean_definition,
    clean_executor_config,
    clean_outputs,
    clean_params_schema,
    config_keep_masked,
    config_sealed,
    config_unsealed,
)
from podi import error_codes as common_codes
from podi.common import check_unique, model_delete, model_update, required_text
from podi.crypto import encrypt_secret, mask_secret
from podi.errors import AppError, validation_error

logger = logging.getLogger("podi.integrations")

BASE_PRESET_NAME = "Base"
API_KEY_FIELDS = {
    "provider",
    "name",
    "status",
    "priority",
    "daily_quota",
    "expires_at",
    "secret_encrypted",
    "secret_hint",
}


# ------------------------------------------------------------------------------ vendor API keys


def api_key_create(
    *,
    provider: str,
    name: str,
    secret: str,
    status: str = VendorApiKey.Status.ACTIVE,
    priority: int = 0,
    daily_quota: int | None = None,
    expires_at=None,
) -> VendorApiKey:
    secret = str(secret or "").strip()
    if not secret:
        raise validation_error({"secret": ["Required."]})
    return VendorApiKey.objects.create(
        provider=required_text(provider, field="provider", max_length=50),
        name=required_text(name, field="name", max_length=100),
        secret_encrypted=encrypt_secret(secret),
        secret_hint=mask_secret(secret),
        status=status,
        priority=priority,
        daily_quota=daily_quota,
        expires_at=expires_at,
    )


def api_key_update(*, key: VendorApiKey, **changes: Any) -> VendorApiKey:
    secret = changes.pop("secret", None)
    if "provider" in changes:
        changes["provider"] = required_text(changes["provider"], field="provider", max_length=50)
    if "name" in changes:
        changes["name"] = required_text(changes["name"], field="name", max_length=100)
    if secret is not None:
        secret = str(secret).strip()
        if not secret:
            raise validation_error({"secret": ["Cannot be empty."]})
        changes.update(secret_encrypted=encrypt_secret(secret), secret_hint=mask_secret(secret))
    key, _ = model_update(instance=key, fields=API_KEY_FIELDS, data=changes)
    return key


def api_key_delete(*, key: VendorApiKey) -> None:
    users = list(key.executors.values_list("name", flat=True)[:5])
    if users:
        raise AppError(
            common_codes.RESOURCE_IN_USE,
            f"This API key is linked to executor(s) {', '.join(users)}; unlink it first.",
            details={"references": [f"executor {n}" for n in users]},
        )
    model_delete(instance=key, what="API key")


# ------------------------------------------------------------------------------ executors


def _clean_executor(kind: str, base_url: str, config: Any) -> tuple[str, dict]:
    if kind not in ExecutorKind.values:
        raise validation_error({"kind": [f"One of {', '.join(ExecutorKind.values)}."]})
    return check_http_url(base_url, "baseUrl"), config_sealed(clean_executor_config(kind, config))


def _clean_count(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise validation_error({field: [f"An integer ≥ {minimum}."]})
    return value


@transaction.atomic
def executor_create(
    *,
    name: str,
    kind: str,
    base_url: str,
    enabled: bool = True,
    max_concurrency: int = 1,
    weight: int = 1,
    config: dict | None = None,
    api_keys: list[VendorApiKey] | None = None,
) -> Executor:
    name = required_text(name, field="name", max_length=100)
    check_unique(model=Executor, field="name", value=name)
    base_url, config = _clean_executor(kind, base_url, config)
    executor = Executor.objects.create(
        name=name,
        kind=kind,
        base_url=base_url,
        enabled=enabled,
        max_concurrency=_clean_count(max_concurrency, "maxConcurrency", 1),
        weight=_clean_count(weight, "weight", 0),
        config=config,
    )
    if api_keys:
        executor.api_keys.set(api_keys)
    return executor


@transaction.atomic
def executor_update(*, executor: Executor, **changes: Any) -> Executor:
    api_keys = changes.pop("api_keys", None)
    if "name" in changes:
        changes["name"] = required_text(changes["name"], field="name", max_length=100)
        check_unique(model=Executor, field="name", value=changes["name"], exclude_pk=executor.pk)
    if "max_concurrency" in changes:
        _clean_count(changes["max_concurrency"], "maxConcurrency", 1)
    if "weight" in changes:
        _clean_count(changes["weight"], "weight", 0)
    if "config" in changes:
        changes["config"] = config_keep_masked(executor.config, changes["config"])
    kind = changes.get("kind", executor.kind)
    if kind != executor.kind and executor.bindings.exists():
        raise validation_error({"kind": ["Cannot change the kind of an executor with bindings."]})
    base_url, config = _clean_executor(
        kind,
        changes.get("base_url", executor.base_url),
        changes.get("config", config_unsealed(executor.config)),
    )
    changes.update(base_url=base_url, config=config)
    executor, _ = model_update(
        instance=executor,
        fields={"name", "kind", "base_url", "enabled", "max_concurrency", "weight", "config"},
        data=changes,
    )
    if api_keys is not None:
        executor.api_keys.set(api_keys)
    return executor


def executor_delete(*, executor: Executor) -> None:
    model_delete(instance=executor, what="executor")


# Gates a health result passes through before it is stored. integrations.agents, one layer up,
# registers one in its AppConfig.ready(): an executor whose agent is offline stays unhealthy.
_health_gates: list[Callable[[Executor, HealthResult], HealthResult]] = []


def register_health_gate(gate: Callable[[Executor, HealthResult], HealthResult]) -> None:
    if gate not in _health_gates:
        _health_gates.append(gate)


def executor_health_check(*, executor: Executor) -> Executor:
    """Check the executor now (outside any transaction: it makes network calls) and store the
    result. Network failures become ``unhealthy`` with a readable error, never an exception."""
    requirements = executor_health_requirements(executor)
    try:
        result = client_for(executor).health(requirements=requirements)
    except ExecutorError as exc:
        result = HealthResult.unhealthy(exc.message)
    except ImproperlyConfigured as exc:  # e.g. a key that no longer decrypts
        result = HealthResult.unhealthy(str(exc))
    if result.node_classes is not None:
        executor_nodes_record(executor=executor, node_classes=result.node_classes)
    for gate in _health_gates:
        result = gate(executor, result)
    previous = executor.health_status
    Executor.objects.filter(pk=executor.pk).update(
        health_status=result.status,
        health_error=result.error[:2000],
        health_details=result.details,
        health_checked_at=timezone.now(),
        health_requested_at=None,
    )
    executor.refresh_from_db()
    if previous != result.status:
        log = logger.warning if result.status == HealthStatus.UNHEALTHY else logger.info
        log(
            "executor %s health %s → %s %s",
            executor.name,
            previous,
            result.status,
            result.error,
            extra={"executor": executor.pk},
        )
    return executor


@transaction.atomic
def executor_nodes_record(*, executor: Executor, node_classes) -> None:
    """Store what ``/object_info`` answered and re-check every binding of the executor: one with
    a missing node class stops dispatching, the others keep running."""
    NodeInventory.objects.update_or_create(
        executor=executor,
        defaults={"node_classes": sorted(node_classes), "checked_at": timezone.now()},
    )
    bindings_check_nodes(bindings=WorkflowBinding.objects.filter(executor=executor))


def bindings_check_nodes(*, bindings) -> None:
    """Store on each binding the node classes its resolved version needs that its executor's last
    ``/object_info`` lacked (``missing_node_classes``; empty and ``nodes_checked_at`` unset when
    that cannot be told yet). Dispatch skips a binding whose list is not empty."""
    rows = list(
        bindings.select_related("workflow__active_version", "workflow_version", "executor")
        if hasattr(bindings, "select_related")
        else bindings
    )
    inventories = node_inventories(b.executor_id for b in rows)
    now = timezone.now()
    for binding in rows:
        missing = binding_missing_nodes(binding, inventories.get(binding.executor_id))
        checked_at = None if missing is None else now
        missing = missing or []
        if missing != binding.missing_node_classes or checked_at != binding.nodes_checked_at:
            WorkflowBinding.objects.filter(pk=binding.pk).update(
                missing_node_classes=missing, nodes_checked_at=checked_at
            )
            binding.missing_node_classes, binding.nodes_checked_at = missing, checked_at
            if missing:
                logger.warning(
                    "binding %s cannot run: %s lacks %s",
                    binding.pk,
                    binding.executor.name,
                    ", ".join(missing),
                    extra={"binding": binding.pk, "executor": binding.executor_id},
                )


def executors_claim_health_checks(*, interval_seconds: int, limit: int = 50) -> list[int]:
    """Ids of enabled executors whose last check is older than the interval, each claimed with
    a guarded update so that two reconciler passes never check the same one twice."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=interval_seconds)
    stale = Q(health_checked_at__isnull=True) | Q(health_checked_at__lt=cutoff)
    unclaimed = Q(health_requested_at__isnull=True) | Q(health_requested_at__lt=cutoff)
    claimed = []
    for pk in Executor.objects.filter(stale, unclaimed, enabled=True).values_list("pk", flat=True)[
        :limit
    ]:
        if Executor.objects.filter(unclaimed, pk=pk).filter(stale).update(health_requested_at=now):
            claimed.append(pk)
    return claimed


# ------------------------------------------------------------------------------ workflows


def workflow_create(*, name: str, kind: str, description: str = "") -> Workflow:
    name = required_text(name, field="name", max_length=100)
    check_unique(model=Workflow, field="name", value=name)
    if kind not in ExecutorKind.values:
        raise validation_error({"kind": [f"One of {', '.join(ExecutorKind.values)}."]})
    return Workflow.objects.create(name=name, kind=kind, description=description or "")


@transaction.atomic
def workflow_update(*, workflow: Workflow, **changes: Any) -> Workflow:
    if "name" in changes:
        changes["name"] = required_text(changes["name"], field="name", max_length=100)
        check_unique(model=Workflow, field="name", value=changes["name"], exclude_pk=workflow.pk)
    if "kind" in changes and changes["kind"] != workflow.kind:
        if changes["kind"] not in ExecutorKind.values:
            raise validation_error({"kind": [f"One of {', '.join(ExecutorKind.values)}."]})
        if workflow.versions.exists():
            raise validation_error(
                {"kind": ["Cannot change the kind of a workflow that has versions."]}
            )
    if "active_version" in changes:
        version = changes["active_version"]
        if isinstance(version, int):
            version = workflow.versions.filter(version=version).first()
            if version is None:
                raise AppError(codes.WORKFLOW_VERSION_NOT_FOUND)
        if version is not None and version.workflow_id != workflow.pk:
            raise AppError(codes.WORKFLOW_VERSION_NOT_FOUND)
        changes["active_version"] = version
    workflow, _ = model_update(
        instance=workflow, fields={"name", "kind", "description", "active_version"}, data=changes
    )
    if "active_version" in changes:
        bindings_check_nodes(bindings=_unpinned_bindings(workflow))
    return workflow


def workflow_delete(*, workflow: Workflow) -> None:
    model_delete(instance=workflow, what="workflow")


def workflow_version_create(
    *,
    workflow: Workflow,
    definition: Any,
    params_schema: Any,
    outputs: Any = None,
    changelog: str = "",
    activate: bool = True,
    created_by=None,
) -> WorkflowVersion:
    """Validate and store the next version (1, 2, …). Refused with 400 WORKFLOW_INVALID and the
    reason in ``details.reason``: not JSON, ComfyUI UI export instead of the API format,
    undeclared placeholder, unused param, unmarked media param, invalid schema."""
    schema = clean_params_schema(params_schema)
    definition = clean_definition(workflow.kind, definition, schema)
    outputs = clean_outputs(workflow.kind, definition, outputs)
    for _attempt in range(3):
        try:
            with transaction.atomic():
                locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
                latest = locked.versions.aggregate(n=Max("version"))["n"] or 0
                version = WorkflowVersion.objects.create(
                    workflow=locked,
                    version=latest + 1,
                    definition=definition,
                    params_schema=schema,
                    outputs=outputs,
                    changelog=changelog or "",
                    created_by=created_by,
                )
                if activate or locked.active_version_id is None:
                    Workflow.objects.filter(pk=locked.pk).update(
                        active_version=version, updated_at=timezone.now()
                    )
                    bindings_check_nodes(bindings=_unpinned_bindings(locked))
            workflow.refresh_from_db()
            return version
        except IntegrityError:  # a concurrent writer took the number (SQLite has no row lock)
            continue
    raise AppError(codes.WORKFLOW_INVALID, "Could not allocate a version number; try again.")


def _unpinned_bindings(workflow: Workflow):
    """Bindings that follow the workflow's active version."""
    return WorkflowBinding.objects.filter(workflow_id=workflow.pk, workflow_version__isnull=True)


@transaction.atomic
def workflow_version_activate(*, version: WorkflowVersion) -> Workflow:
    Workflow.objects.filter(pk=version.workflow_id).update(
        active_version=version, updated_at=timezone.now()
    )
    workflow = version.workflow
    workflow.refresh_from_db()
    bindings_check_nodes(bindings=_unpinned_bindings(workflow))
    return workflow


# ------------------------------------------------------------------------------ abilities


def _clean_ability_fields(changes: dict[str, Any]) -> None:
    if "code" in changes:
        code = str(changes["code"] or "").strip()
        try:
            validate_slug(code)
        except Exception:  # noqa: BLE001 — Django's ValidationError; reworded below
            raise validation_error(
                {"code": ["Letters, digits, '-' and '_' only (it is the task action)."]}
            ) from None
        changes["code"] = code
    if "display_name" in changes:
        changes["display_name"] = required_text(
            changes["display_name"], field="displayName", max_length=200
        )
    if "defaults" in changes and not isinstance(changes["defaults"] or {}, dict):
        raise validation_error({"defaults": ["Must be an object."]})
    if "status" in changes and changes["status"] not in Ability.Status.values:
        raise validation_error({"status": [f"One of {', '.join(Ability.Status.values)}."]})
    for field, name, minimum in (("points", "points", 0), ("max_outputs", "maxOutputs", 1)):
        if field in changes:
            _clean_count(changes[field], name, minimum)


def _check_partial_params(ability: Ability, params: dict, field: str) -> None:
    schema = ability_params_schema(ability)
    if not (schema.get("properties") or {}):
        return  # nothing bound yet: checked in full when a task is submitted
    try:
        params_validate(schema=schema, params=params, partial=True)
    except AppError as exc:
        fields = {f"{field}.{k}": v for k, v in exc.details.get("fields", {}).items()}
        raise validation_error(fields) from None


@transaction.atomic
def ability_create(
    *,
    code: str,
    display_name: str,
    description: str = "",
    category: str = "",
    provider: str = "",
    points: int = 0,
    defaults: dict | None = None,
    status: str = Ability.Status.ACTIVE,
    requires_image: bool = False,
    max_outputs: int = 1,
) -> Ability:
    """Create an ability and its base preset (which cannot be deleted)."""
    fields = {
        "code": code,
        "display_name": display_name,
        "defaults": defaults or {},
        "status": status,
        "points": points,
        "max_outputs": max_outputs,
    }
    _clean_ability_fields(fields)
    check_unique(model=Ability, field="code", value=fields["code"])
    ability = Ability.objects.create(
        description=description or "",
        category=category or "",
        provider=provider or "",
        requires_image=requires_image,
        **fields,
    )
    Preset.objects.create(ability=ability, name=BASE_PRESET_NAME, params={}, is_base=True)
    return ability


@transaction.atomic
def ability_update(*, ability: Ability, **changes: Any) -> Ability:
    _clean_ability_fields(changes)
    if "code" in changes:
        check_unique(model=Ability, field="code", value=changes["code"], exclude_pk=ability.pk)
    if "defaults" in changes:
        _check_partial_params(ability, changes["defaults"] or {}, "defaults")
    ability, _ = model_update(
        instance=ability,
        fields={
            "code",
            "display_name",
            "description",
            "category",
            "provider",
            "points",
            "defaults",
            "status",
            "requires_image",
            "max_outputs",
        },
        data=changes,
    )
    return ability


def ability_delete(*, ability: Ability) -> None:
    model_delete(instance=ability, what="ability")


# ------------------------------------------------------------------------------ bindings


def binding_check(
    *, workflow: Workflow, executor: Executor, workflow_version: WorkflowVersion | None
) -> None:
    if workflow.kind != executor.kind:
        raise AppError(
            codes.INVALID_WORKFLOW_OR_EXECUTOR,
            f"Workflow {workflow.name!r} is a {workflow.kind} workflow but executor "
            f"{executor.name!r} is {executor.kind}.",
            details={"workflowKind": workflow.kind, "executorKind": executor.kind},
        )
    if workflow_version is not None and workflow_version.workflow_id != workflow.pk:
        raise AppError(
            codes.INVALID_WORKFLOW_OR_EXECUTOR,
            f"Version {workflow_version.version} belongs to another workflow.",
        )
    if workflow_version is None and workflow.active_version_id is None:
        raise AppError(
            codes.INVALID_WORKFLOW_OR_EXECUTOR,
            f"Workflow {workflow.name!r} has no version yet: add one or pin a version.",
        )


def _clean_binding_numbers(changes: dict[str, Any]) -> None:
    for field, name, minimum in (
        ("weight", "weight", 0),
        ("max_attempts", "maxAttempts", 1),
        ("queue_timeout", "queueTimeout", 1),
        ("run_timeout", "runTimeout", 1),
    ):
        if field in changes:
            _clean_count(changes[field], name, minimum)
    if "priority" in changes and (
        isinstance(changes["priority"], bool) or not isinstance(changes["priority"], int)
    ):
        raise validation_error({"priority": ["An integer."]})


def binding_create(
    *,
    ability: Ability,
    workflow: Workflow,
    executor: Executor,
    workflow_version: WorkflowVersion | None = None,
    priority: int = 0,
    weight: int = 1,
    enabled: bool = True,
    max_attempts: int = 3,
    queue_timeout: int = 600,
    run_timeout: int = 600,
) -> WorkflowBinding:
    binding_check(workflow=workflow, executor=executor, workflow_version=workflow_version)
    numbers = {
        "priority": priority,
        "weight": weight,
        "max_attempts": max_attempts,
        "queue_timeout": queue_timeout,
        "run_timeout": run_timeout,
    }
    _clean_binding_numbers(numbers)
    binding = WorkflowBinding.objects.create(
        ability=ability,
        workflow=workflow,
        workflow_version=workflow_version,
        executor=executor,
        enabled=enabled,
        **numbers,
    )
    bindings_check_nodes(bindings=[binding])
    return binding


@transaction.atomic
def binding_update(*, binding: WorkflowBinding, **changes: Any) -> WorkflowBinding:
    _clean_binding_numbers(changes)
    workflow = changes.get("workflow", binding.workflow)
    executor = changes.get("executor", binding.executor)
    version = changes.get("workflow_version", binding.workflow_version)
    if "workflow" in changes and "workflow_version" not in changes and version is not None:
        if version.workflow_id != workflow.pk:
            changes["workflow_version"] = version = None
    binding_check(workflow=workflow, executor=executor, workflow_version=version)
    binding, _ = model_update(
        instance=binding,
        fields={
            "ability",
            "workflow",
            "workflow_version",
            "executor",
            "priority",
            "weight",
            "enabled",
            "max_attempts",
            "queue_timeout",
            "run_timeout",
        },
        data=changes,
    )
    if {"workflow", "workflow_version", "executor"} & set(changes):
        bindings_check_nodes(bindings=[binding])
    return binding


def binding_delete(*, binding: WorkflowBinding) -> None:
    model_delete(instance=binding, what="binding")


# ------------------------------------------------------------------------------ presets


def preset_create(*, ability: Ability, name: str, params: dict | None = None) -> Preset:
    name = required_text(name, field="name", max_length=100)
    params = params or {}
    if not isinstance(params, dict):
        raise validation_error({"params": ["Must be an object."]})
    if ability.presets.filter(name=name).exists():
        raise validation_error({"name": [f"This ability already has a preset {name!r}."]})
    _check_partial_params(ability, params, "params")
    return Preset.objects.create(ability=ability, name=name, params=params, is_base=False)


def preset_update(*, preset: Preset, **changes: Any) -> Preset:
    if "name" in changes:
        changes["name"] = required_text(changes["name"], field="name", max_length=100)
        if preset.ability.presets.filter(name=changes["name"]).exclude(pk=preset.pk).exists():
            raise validation_error({"name": ["This ability already has a preset of that name."]})
    if "params" in changes:
        if not isinstance(changes["params"] or {}, dict):
            raise validation_error({"params": ["Must be an object."]})
        changes["params"] = changes["params"] or {}
        _check_partial_params(preset.ability, changes["params"], "params")
    preset, _ = model_update(instance=preset, fields={"name", "params"}, data=changes)
    return preset


def preset_delete(*, preset: Preset) -> None:
    if preset.is_base:
        raise AppError(codes.PRESET_IS_BASE)
    preset.delete()
