"""Admin API (``/api/admin/``, staff or ``admin``-scope keys) and the public ability catalog
(``/api/abilities``). docs/adr/0005-integrations-catalog.md."""

from __future__ import annotations

from django.db.models import Prefetch
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations import error_codes as codes
from integrations.models import (
    Ability,
    Executor,
    ExecutorKind,
    HealthStatus,
    Preset,
    VendorApiKey,
    Workflow,
    WorkflowBinding,
)
from integrations.selectors import (
    abilities_active,
    ability_get,
    ability_get_public,
    ability_params_schema,
    api_key_get,
    binding_get,
    binding_warnings,
    executor_get,
    preset_get,
    with_ordered_bindings,
    workflow_get,
    workflow_version_warnings,
)
from integrations.services import (
    ability_create,
    ability_delete,
    ability_update,
    api_key_create,
    api_key_delete,
    api_key_update,
    binding_create,
    binding_delete,
    binding_update,
    executor_create,
    executor_delete,
    executor_health_check,
    executor_update,
    preset_create,
    preset_delete,
    preset_update,
    workflow_create,
    workflow_delete,
    workflow_update,
    workflow_version_create,
)
from integrations.validation import config_for_display
from podi.api_helpers import AdminApi, query_flag, query_int, rename_keys
from podi.errors import AppError, validation_error
from podi.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from podi.pagination import paginate
from podi.schema import error_responses

ADMIN_ERRORS = (400, 401, 403)

# Bounds that keep values inside the database's 32-bit integer columns.
INT32_MAX = 2**31 - 1
PRIORITY_MAX = 1_000_000
SECONDS_MAX = 30 * 86400


def _ids(model, ids, error) -> list:
    ids = list(dict.fromkeys(ids))
    found = {obj.pk: obj for obj in model.objects.filter(pk__in=ids)}
    missing = [pk for pk in ids if pk not in found]
    if missing:
        raise AppError(error, details={"ids": missing})
    return [found[pk] for pk in ids]


# ============================================================================== executors


class ExecutorHealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=HealthStatus.choices, source="health_status")
    checkedAt = serializers.DateTimeField(source="health_checked_at", allow_null=True)
    lastError = serializers.CharField(source="health_error", allow_blank=True)
    details = serializers.DictField(source="health_details")


class ExecutorOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=ExecutorKind.choices)
    baseUrl = serializers.CharField(source="base_url")
    enabled = serializers.BooleanField()
    maxConcurrency = serializers.IntegerField(source="max_concurrency")
    weight = serializers.IntegerField()
    config = serializers.SerializerMethodField()
    apiKeyIds = serializers.SerializerMethodField()
    health = ExecutorHealthSerializer(source="*")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    def get_config(self, obj) -> dict:
        return config_for_display(obj.config)

    def get_apiKeyIds(self, obj) -> list[int]:
        return sorted(key.pk for key in obj.api_keys.all())


EXECUTOR_FIELDS = {
    "baseUrl": "base_url",
    "maxConcurrency": "max_concurrency",
    "apiKeyIds": "api_keys",
}


class AdminExecutorsApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        kind = serializers.ChoiceField(choices=ExecutorKind.choices)
        baseUrl = serializers.CharField(max_length=500)
        enabled = serializers.BooleanField(default=True)
        maxConcurrency = serializers.IntegerField(min_value=1, max_value=10000, default=1)
        weight = serializers.IntegerField(min_value=0, max_value=10000, default=1)
        config = serializers.DictField(default=dict, help_text="Typed per kind; see README.")
        apiKeyIds = serializers.ListField(child=serializers.IntegerField(), default=list)

    @extend_schema(
        summary="List executors",
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, enum=ExecutorKind.values),
            OpenApiParameter("enabled", OpenApiTypes.BOOL),
            OpenApiParameter("health", OpenApiTypes.STR, enum=HealthStatus.values),
            OpenApiParameter("search", OpenApiTypes.STR),
        ],
        responses={200: ExecutorOutputSerializer(many=True), **error_responses(*ADMIN_ERRORS)},
    )
    def get(self, request):
        query = Executor.objects.prefetch_related("api_keys").order_by("name")
        if kind := request.query_params.get("kind"):
            query = query.filter(kind=kind)
        if (enabled := query_flag(request, "enabled")) is not None:
            query = query.filter(enabled=enabled)
        if health := request.query_params.get("health"):
            query = query.filter(health_status=health)
        if search := request.query_params.get("search"):
            query = query.filter(name__icontains=search)
        return paginate(request, query, ExecutorOutputSerializer)

    @extend_schema(
        summary="Register an executor",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: ExecutorOutputSerializer, **error_responses(*ADMIN_ERRORS, 404, 409)},
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = rename_keys(data.validated_data, EXECUTOR_FIELDS)
        values["api_keys"] = _ids(VendorApiKey, values["api_keys"], codes.API_KEY_NOT_FOUND)
        executor = executor_create(**values)
        return Response(ExecutorOutputSerializer(executor).data, status=status.HTTP_201_CREATED)


class AdminExecutorApi(AdminApi):
    @extend_schema(
        summary="Get an executor",
        responses={200: ExecutorOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, executor_id: int):
        return Response(ExecutorOutputSerializer(executor_get(executor_id=executor_id)).data)

    @extend_schema(
        summary="Change an executor",
        request=AdminExecutorsApi.InputSerializer(partial=True),
        responses={200: ExecutorOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def patch(self, request, executor_id: int):
        executor = executor_get(executor_id=executor_id)
        data = AdminExecutorsApi.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = rename_keys(data.validated_data, EXECUTOR_FIELDS)
        if "api_keys" in values:
            values["api_keys"] = _ids(VendorApiKey, values["api_keys"], codes.API_KEY_NOT_FOUND)
        executor = executor_update(executor=executor, **values)
        return Response(ExecutorOutputSerializer(executor_get(executor_id=executor.pk)).data)

    @extend_schema(
        summary="Delete an executor (409 RESOURCE_IN_USE while bindings use it)",
        responses={204: None, **error_responses(401, 403, 404, 409)},
    )
    def delete(self, request, executor_id: int):
        executor_delete(executor=executor_get(executor_id=executor_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AdminExecutorCheckApi(AdminApi):
    @extend_schema(
        summary="Run a health check now",
        request=None,
        responses={200: ExecutorOutputSerializer, **error_responses(401, 403, 404)},
    )
    def post(self, request, executor_id: int):
        executor = executor_health_check(executor=executor_get(executor_id=executor_id))
        return Response(ExecutorOutputSerializer(executor_get(executor_id=executor.pk)).data)


# ============================================================================== workflows


class WorkflowOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=ExecutorKind.choices)
    description = serializers.CharField(allow_blank=True)
    activeVersion = serializers.IntegerField(
        source="active_version.version", allow_null=True, default=None
    )
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


class WorkflowVersionOutputSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    definition = serializers.JSONField()
    paramsSchema = serializers.JSONField(source="params_schema")
    outputs = serializers.ListField(child=serializers.CharField())
    changelog = serializers.CharField(allow_blank=True)
    createdAt = serializers.DateTimeField(source="created_at")


class WarningsMixin(serializers.Serializer):
    warnings = serializers.ListField(
        child=serializers.CharField(),
        help_text="Things the operator should know, e.g. node classes an executor lacks (the "
        "binding concerned will not run until they are installed). Empty when all is well.",
    )


class WorkflowVersionCreatedSerializer(WorkflowVersionOutputSerializer, WarningsMixin):
    pass


class AdminWorkflowsApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        kind = serializers.ChoiceField(choices=ExecutorKind.choices)
        description = serializers.CharField(allow_blank=True, default="")
        activeVersion = serializers.IntegerField(
            required=False, help_text="PATCH only: the version number to activate."
        )

    @extend_schema(
        summary="List workflows",
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, enum=ExecutorKind.values),
            OpenApiParameter("search", OpenApiTypes.STR),
        ],
        responses={200: WorkflowOutputSerializer(many=True), **error_responses(*ADMIN_ERRORS)},
    )
    def get(self, request):
        query = Workflow.objects.select_related("active_version").order_by("name")
        if kind := request.query_params.get("kind"):
            query = query.filter(kind=kind)
        if search := request.query_params.get("search"):
            query = query.filter(name__icontains=search)
        return paginate(request, query, WorkflowOutputSerializer)

    @extend_schema(
        summary="Create a workflow (then POST its first version)",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: WorkflowOutputSerializer, **error_responses(*ADMIN_ERRORS, 409)},
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        if "activeVersion" in values:
            raise validation_error({"activeVersion": ["A new workflow has no versions yet."]})
        workflow = workflow_create(**values)
        return Response(WorkflowOutputSerializer(workflow).data, status=status.HTTP_201_CREATED)


class AdminWorkflowApi(AdminApi):
    @extend_schema(
        summary="Get a workflow",
        responses={200: WorkflowOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, workflow_id: int):
        return Response(WorkflowOutputSerializer(workflow_get(workflow_id=workflow_id)).data)

    @extend_schema(
        summary="Change a workflow (activeVersion switches the active version)",
        request=AdminWorkflowsApi.InputSerializer(partial=True),
        responses={200: WorkflowOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def patch(self, request, workflow_id: int):
        workflow = workflow_get(workflow_id=workflow_id)
        data = AdminWorkflowsApi.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = rename_keys(data.validated_data, {"activeVersion": "active_version"})
        workflow = workflow_update(workflow=workflow, **values)
        return Response(WorkflowOutputSerializer(workflow_get(workflow_id=workflow.pk)).data)

    @extend_schema(
        summary="Delete a workflow and its versions (409 RESOURCE_IN_USE while bound)",
        responses={204: None, **error_responses(401, 403, 404, 409)},
    )
    def delete(self, request, workflow_id: int):
        workflow_delete(workflow=workflow_get(workflow_id=workflow_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AdminWorkflowVersionsApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField(
            help_text="ComfyUI API-format graph; Coze {workflowId, parameters}; HTTP request "
            "template. String values may contain {{placeholders}}."
        )
        paramsSchema = serializers.JSONField(help_text="JSON Schema (Draft 2020-12) of params.")
        outputs = serializers.JSONField(required=False, default=None)
        changelog = serializers.CharField(allow_blank=True, default="")
        activate = serializers.BooleanField(default=True)

    @extend_schema(
        summary="List a workflow's versions (newest first)",
        responses={
            200: WorkflowVersionOutputSerializer(many=True),
            **error_responses(*ADMIN_ERRORS, 404),
        },
    )
    def get(self, request, workflow_id: int):
        workflow = workflow_get(workflow_id=workflow_id)
        return paginate(
            request, workflow.versions.order_by("-version"), WorkflowVersionOutputSerializer
        )

    @extend_schema(
        summary="Add an immutable version (400 WORKFLOW_INVALID with details.reason)",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: WorkflowVersionCreatedSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    @idempotent
    def post(self, request, workflow_id: int):
        workflow = workflow_get(workflow_id=workflow_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        version = workflow_version_create(
            workflow=workflow,
            definition=values["definition"],
            params_schema=values["paramsSchema"],
            outputs=values["outputs"],
            changelog=values["changelog"],
            activate=values["activate"],
            created_by=request.user if request.user.is_authenticated else None,
        )
        return Response(
            {
                **WorkflowVersionOutputSerializer(version).data,
                "warnings": workflow_version_warnings(version),
            },
            status=status.HTTP_201_CREATED,
        )


# ============================================================================== abilities


class PresetSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    isBase = serializers.BooleanField(source="is_base")
    params = serializers.DictField()


class AbilityOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.CharField()
    displayName = serializers.CharField(source="display_name")
    description = serializers.CharField(allow_blank=True)
    category = serializers.CharField(allow_blank=True)
    provider = serializers.CharField(allow_blank=True)
    points = serializers.IntegerField()
    defaults = serializers.DictField()
    status = serializers.ChoiceField(choices=Ability.Status.choices)
    requiresImage = serializers.BooleanField(source="requires_image")
    maxOutputs = serializers.IntegerField(source="max_outputs")
    paramsSchema = serializers.SerializerMethodField(
        help_text="Read-only: the params schema of the bound active workflow version."
    )
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    def get_paramsSchema(self, obj) -> dict:
        return ability_params_schema(obj)


class PublicAbilitySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.CharField()
    displayName = serializers.CharField(source="display_name")
    description = serializers.CharField(allow_blank=True)
    provider = serializers.CharField(allow_blank=True)
    category = serializers.CharField(allow_blank=True)
    points = serializers.IntegerField()
    paramsSchema = serializers.SerializerMethodField()
    defaults = serializers.DictField()
    requiresImage = serializers.BooleanField(source="requires_image")
    maxOutputs = serializers.IntegerField(source="max_outputs")
    presets = PresetSummarySerializer(many=True, source="presets.all")

    def get_paramsSchema(self, obj) -> dict:
        return ability_params_schema(obj)


ABILITY_FIELDS = {
    "displayName": "display_name",
    "requiresImage": "requires_image",
    "maxOutputs": "max_outputs",
}


class AdminAbilitiesApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        code = serializers.SlugField(max_length=100)
        displayName = serializers.CharField(max_length=200)
        description = serializers.CharField(allow_blank=True, default="")
        category = serializers.CharField(allow_blank=True, max_length=50, default="")
        provider = serializers.CharField(allow_blank=True, max_length=50, default="")
        points = serializers.IntegerField(min_value=0, default=0)
        defaults = serializers.DictField(default=dict)
        status = serializers.ChoiceField(choices=Ability.Status.choices, default="active")
        requiresImage = serializers.BooleanField(default=False)
        maxOutputs = serializers.IntegerField(min_value=1, max_value=100, default=1)

    @extend_schema(
        summary="List abilities",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Ability.Status.values),
            OpenApiParameter("search", OpenApiTypes.STR),
        ],
        responses={200: AbilityOutputSerializer(many=True), **error_responses(*ADMIN_ERRORS)},
    )
    def get(self, request):
        query = with_ordered_bindings(Ability.objects.order_by("code"))
        if value := request.query_params.get("status"):
            query = query.filter(status=value)
        if search := request.query_params.get("search"):
            query = query.filter(code__icontains=search)
        return paginate(request, query, AbilityOutputSerializer)

    @extend_schema(
        summary="Create an ability (its base preset is created with it)",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: AbilityOutputSerializer, **error_responses(*ADMIN_ERRORS)},
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ability = ability_create(**rename_keys(data.validated_data, ABILITY_FIELDS))
        return Response(
            AbilityOutputSerializer(ability_get(ability_id=ability.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class AdminAbilityApi(AdminApi):
    @extend_schema(
        summary="Get an ability",
        responses={200: AbilityOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, ability_id: int):
        return Response(AbilityOutputSerializer(ability_get(ability_id=ability_id)).data)

    @extend_schema(
        summary="Change an ability",
        request=AdminAbilitiesApi.InputSerializer(partial=True),
        responses={200: AbilityOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def patch(self, request, ability_id: int):
        ability = ability_get(ability_id=ability_id)
        data = AdminAbilitiesApi.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        ability_update(ability=ability, **rename_keys(data.validated_data, ABILITY_FIELDS))
        return Response(AbilityOutputSerializer(ability_get(ability_id=ability.pk)).data)

    @extend_schema(
        summary="Delete an ability (409 RESOURCE_IN_USE while it has bindings)",
        responses={204: None, **error_responses(401, 403, 404, 409)},
    )
    def delete(self, request, ability_id: int):
        ability_delete(ability=ability_get(ability_id=ability_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _public_abilities():
    return abilities_active().prefetch_related(
        Prefetch("presets", queryset=Preset.objects.order_by("-is_base", "name"))
    )


class AbilitiesApi(APIView):
    @extend_schema(
        summary="The ability catalog (active abilities)",
        parameters=[OpenApiParameter("category", OpenApiTypes.STR)],
        responses={200: PublicAbilitySerializer(many=True), **error_responses(401, 403)},
    )
    def get(self, request):
        query = _public_abilities().order_by("category", "code")
        if category := request.query_params.get("category"):
            query = query.filter(category=category)
        return paginate(request, query, PublicAbilitySerializer)


class AbilityApi(APIView):
    @extend_schema(
        summary="One ability of the catalog",
        responses={200: PublicAbilitySerializer, **error_responses(401, 403, 404)},
    )
    def get(self, request, ability_id: int):
        ability = ability_get_public(ability_id=ability_id)
        ability = _public_abilities().get(pk=ability.pk)
        return Response(PublicAbilitySerializer(ability).data)


# ============================================================================== bindings


class BindingOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    ability = serializers.IntegerField(source="ability_id")
    workflow = serializers.IntegerField(source="workflow_id")
    workflowVersion = serializers.IntegerField(
        source="workflow_version.version",
        allow_null=True,
        default=None,
        help_text="Pinned version number; null = the workflow's active version.",
    )
    executor = serializers.IntegerField(source="executor_id")
    priority = serializers.IntegerField()
    weight = serializers.IntegerField()
    enabled = serializers.BooleanField()
    missingNodeClasses = serializers.ListField(
        source="missing_node_classes",
        child=serializers.CharField(),
        help_text="ComfyUI node classes the bound version needs that the executor's last "
        "/object_info lacked; while not empty, dispatch skips this binding.",
    )
    nodesCheckedAt = serializers.DateTimeField(
        source="nodes_checked_at",
        allow_null=True,
        help_text="When node classes were last checked (null: not yet, or not ComfyUI).",
    )
    maxAttempts = serializers.IntegerField(source="max_attempts")
    queueTimeout = serializers.IntegerField(source="queue_timeout")
    runTimeout = serializers.IntegerField(source="run_timeout")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


class BindingSavedSerializer(BindingOutputSerializer, WarningsMixin):
    pass


def _binding_saved(binding: WorkflowBinding) -> dict:
    binding = binding_get(binding_id=binding.pk)
    return {**BindingOutputSerializer(binding).data, "warnings": binding_warnings(binding)}


BINDING_FIELDS = {
    "workflowVersion": "workflow_version",
    "maxAttempts": "max_attempts",
    "queueTimeout": "queue_timeout",
    "runTimeout": "run_timeout",
}


def _binding_refs(values: dict, current: WorkflowBinding | None = None) -> dict:
    """Resolve ids in a binding body to rows (404 *_NOT_FOUND for unknown ids)."""
    if "ability" in values:
        values["ability"] = ability_get(ability_id=values["ability"])
    if "executor" in values:
        values["executor"] = executor_get(executor_id=values["executor"])
    if "workflow" in values:
        values["workflow"] = workflow_get(workflow_id=values["workflow"])
    if values.get("workflow_version") is not None:
        workflow = values.get("workflow") or (current.workflow if current else None)
        number = values["workflow_version"]
        version = workflow.versions.filter(version=number).first() if workflow else None
        if version is None:
            raise AppError(
                codes.INVALID_WORKFLOW_OR_EXECUTOR,
                f"The workflow has no version {number}.",
            )
        values["workflow_version"] = version
    return values


class AdminBindingsApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        ability = serializers.IntegerField()
        workflow = serializers.IntegerField()
        workflowVersion = serializers.IntegerField(allow_null=True, default=None, min_value=1)
        executor = serializers.IntegerField()
        priority = serializers.IntegerField(
            default=0, min_value=-PRIORITY_MAX, max_value=PRIORITY_MAX
        )
        weight = serializers.IntegerField(min_value=0, max_value=10000, default=1)
        enabled = serializers.BooleanField(default=True)
        maxAttempts = serializers.IntegerField(min_value=1, max_value=100, default=3)
        queueTimeout = serializers.IntegerField(min_value=1, max_value=SECONDS_MAX, default=600)
        runTimeout = serializers.IntegerField(min_value=1, max_value=SECONDS_MAX, default=600)

    @extend_schema(
        summary="List workflow bindings",
        parameters=[
            OpenApiParameter("ability", OpenApiTypes.INT),
            OpenApiParameter("executor", OpenApiTypes.INT),
            OpenApiParameter("workflow", OpenApiTypes.INT),
            OpenApiParameter("enabled", OpenApiTypes.BOOL),
        ],
        responses={200: BindingOutputSerializer(many=True), **error_responses(*ADMIN_ERRORS)},
    )
    def get(self, request):
        query = WorkflowBinding.objects.select_related("workflow_version").order_by(
            "ability_id", "-priority", "id"
        )
        for name in ("ability", "executor", "workflow"):
            if (value := query_int(request, name)) is not None:
                query = query.filter(**{f"{name}_id": value})
        if (enabled := query_flag(request, "enabled")) is not None:
            query = query.filter(enabled=enabled)
        return paginate(request, query, BindingOutputSerializer)

    @extend_schema(
        summary="Bind an ability to a workflow on an executor",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: BindingSavedSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = _binding_refs(rename_keys(data.validated_data, BINDING_FIELDS))
        binding = binding_create(**values)
        return Response(_binding_saved(binding), status=status.HTTP_201_CREATED)


class AdminBindingApi(AdminApi):
    @extend_schema(
        summary="Get a workflow binding",
        responses={200: BindingOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, binding_id: int):
        return Response(BindingOutputSerializer(binding_get(binding_id=binding_id)).data)

    @extend_schema(
        summary="Change a workflow binding",
        request=AdminBindingsApi.InputSerializer(partial=True),
        responses={200: BindingSavedSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def patch(self, request, binding_id: int):
        binding = binding_get(binding_id=binding_id)
        data = AdminBindingsApi.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = _binding_refs(rename_keys(data.validated_data, BINDING_FIELDS), binding)
        binding = binding_update(binding=binding, **values)
        return Response(_binding_saved(binding))

    @extend_schema(
        summary="Delete a workflow binding",
        responses={204: None, **error_responses(401, 403, 404, 409)},
    )
    def delete(self, request, binding_id: int):
        binding_delete(binding=binding_get(binding_id=binding_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# ============================================================================== vendor API keys


class ApiKeyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    provider = serializers.CharField()
    name = serializers.CharField()
    masked = serializers.CharField(
        help_text="The secret, masked. The secret itself is never returned."
    )
    status = serializers.ChoiceField(choices=VendorApiKey.Status.choices)
    priority = serializers.IntegerField()
    dailyQuota = serializers.IntegerField(source="daily_quota", allow_null=True)
    usedToday = serializers.SerializerMethodField()
    expiresAt = serializers.DateTimeField(source="expires_at", allow_null=True)
    lastUsedAt = serializers.DateTimeField(source="last_used_at", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")

    def get_usedToday(self, obj) -> int:
        return obj.usage_on(timezone.now().date())


API_KEY_FIELDS = {"dailyQuota": "daily_quota", "expiresAt": "expires_at"}


class AdminApiKeysApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        provider = serializers.CharField(max_length=50)
        name = serializers.CharField(max_length=100)
        secret = serializers.CharField(
            write_only=True, max_length=4096, trim_whitespace=True, help_text="Write-only."
        )
        status = serializers.ChoiceField(choices=VendorApiKey.Status.choices, default="active")
        priority = serializers.IntegerField(
            default=0, min_value=-PRIORITY_MAX, max_value=PRIORITY_MAX
        )
        dailyQuota = serializers.IntegerField(
            min_value=0, max_value=INT32_MAX, allow_null=True, default=None
        )
        expiresAt = serializers.DateTimeField(allow_null=True, default=None)

    @extend_schema(
        summary="List vendor API keys (secrets masked)",
        parameters=[
            OpenApiParameter("provider", OpenApiTypes.STR),
            OpenApiParameter("status", OpenApiTypes.STR, enum=VendorApiKey.Status.values),
        ],
        responses={200: ApiKeyOutputSerializer(many=True), **error_responses(*ADMIN_ERRORS)},
    )
    def get(self, request):
        query = VendorApiKey.objects.order_by("provider", "-priority", "id")
        if provider := request.query_params.get("provider"):
            query = query.filter(provider=provider)
        if value := request.query_params.get("status"):
            query = query.filter(status=value)
        return paginate(request, query, ApiKeyOutputSerializer)

    @extend_schema(
        summary="Store a vendor API key (encrypted at rest)",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: ApiKeyOutputSerializer, **error_responses(*ADMIN_ERRORS)},
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = api_key_create(**rename_keys(data.validated_data, API_KEY_FIELDS))
        return Response(ApiKeyOutputSerializer(key).data, status=status.HTTP_201_CREATED)


class AdminApiKeyApi(AdminApi):
    @extend_schema(
        summary="Get a vendor API key (masked)",
        responses={200: ApiKeyOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, key_id: int):
        return Response(ApiKeyOutputSerializer(api_key_get(key_id=key_id)).data)

    @extend_schema(
        summary="Change a vendor API key (send secret to rotate it)",
        request=AdminApiKeysApi.InputSerializer(partial=True),
        responses={200: ApiKeyOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def patch(self, request, key_id: int):
        key = api_key_get(key_id=key_id)
        data = AdminApiKeysApi.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        key = api_key_update(key=key, **rename_keys(data.validated_data, API_KEY_FIELDS))
        return Response(ApiKeyOutputSerializer(key).data)

    @extend_schema(
        summary="Delete a vendor API key (409 RESOURCE_IN_USE while linked to executors)",
        responses={204: None, **error_responses(401, 403, 404, 409)},
    )
    def delete(self, request, key_id: int):
        api_key_delete(key=api_key_get(key_id=key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# ============================================================================== presets


class PresetOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    ability = serializers.IntegerField(source="ability_id")
    name = serializers.CharField()
    params = serializers.DictField()
    isBase = serializers.BooleanField(source="is_base")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


class AdminPresetsApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        ability = serializers.IntegerField()
        name = serializers.CharField(max_length=100)
        params = serializers.DictField(default=dict)

    @extend_schema(
        summary="List presets",
        parameters=[OpenApiParameter("ability", OpenApiTypes.INT)],
        responses={200: PresetOutputSerializer(many=True), **error_responses(*ADMIN_ERRORS)},
    )
    def get(self, request):
        query = Preset.objects.order_by("ability_id", "-is_base", "name")
        if (ability := query_int(request, "ability")) is not None:
            query = query.filter(ability_id=ability)
        return paginate(request, query, PresetOutputSerializer)

    @extend_schema(
        summary="Create a preset for an ability",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: PresetOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        values["ability"] = ability_get(ability_id=values["ability"])
        preset = preset_create(**values)
        return Response(PresetOutputSerializer(preset).data, status=status.HTTP_201_CREATED)


class AdminPresetApi(AdminApi):
    class PatchSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, required=False)
        params = serializers.DictField(required=False)

    @extend_schema(
        summary="Get a preset",
        responses={200: PresetOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, preset_id: int):
        return Response(PresetOutputSerializer(preset_get(preset_id=preset_id)).data)

    @extend_schema(
        summary="Change a preset",
        request=PatchSerializer,
        responses={200: PresetOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def patch(self, request, preset_id: int):
        preset = preset_get(preset_id=preset_id)
        data = self.PatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        preset = preset_update(preset=preset, **data.validated_data)
        return Response(PresetOutputSerializer(preset).data)

    @extend_schema(
        summary="Delete a preset (409 PRESET_IS_BASE for the base preset)",
        responses={204: None, **error_responses(401, 403, 404, 409)},
    )
    def delete(self, request, preset_id: int):
        preset_delete(preset=preset_get(preset_id=preset_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


__all__ = [
    "AbilitiesApi",
    "AbilityApi",
    "AdminAbilitiesApi",
    "AdminAbilityApi",
    "AdminApiKeyApi",
    "AdminApiKeysApi",
    "AdminBindingApi",
    "AdminBindingsApi",
    "AdminExecutorApi",
    "AdminExecutorCheckApi",
    "AdminExecutorsApi",
    "AdminPresetApi",
    "AdminPresetsApi",
    "AdminWorkflowApi",
    "AdminWorkflowVersionsApi",
    "AdminWorkflowsApi",
]
