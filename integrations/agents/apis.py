"""The agent API (``/api/agent/v1/…``, agent JWTs) and the admin API for agents, manifests and
agent tasks (``/api/admin/…``, staff or ``admin``-scope keys). docs/adr/0008-gpu-server-agents.md."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations.agents import error_codes as codes
from integrations.agents.models import Agent, AgentTask, AgentTaskAction, Alert, ManifestVersion
from integrations.agents.selectors import (
    agent_for_token,
    agent_get,
    agent_task_for_token,
    agent_task_get,
    agent_tasks_queryset,
    agents_queryset,
    manifest_for_token,
    manifest_get,
    manifests_queryset,
)
from integrations.agents.services.agent_task_reports import (
    agent_task_complete,
    agent_task_fail,
    agent_task_report,
)
from integrations.agents.services.agent_tasks import agent_task_create
from integrations.agents.services.agents import agent_create, agent_delete, agent_update
from integrations.agents.services.alerts import alert_raise
from integrations.agents.services.liveness import MISSED_HEARTBEATS, agent_heartbeat
from integrations.agents.services.manifests import manifest_create, manifest_delete, manifest_update
from integrations.agents.services.tokens import agent_token_mint, agent_tokens_revoke
from integrations.agents.tokens import AgentClaims, token_decode
from integrations.selectors import executor_get
from podi.api_helpers import AdminApi, query_flag, query_int, rename_keys
from podi.errors import AppError
from podi.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from podi.pagination import paginate
from podi.schema import error_responses, page_of

ADMIN_ERRORS = (400, 401, 403)
AGENT_ERRORS = (400, 401, 403, 429)


# ============================================================================== authentication


@dataclass(frozen=True)
class AgentPrincipal:
    """``request.user`` on agent routes: who the (verified) token speaks for."""

    claims: AgentClaims
    is_authenticated = True
    is_active = True
    is_staff = False

    @property
    def pk(self) -> str:  # throttling keys on it
        return f"agent:{self.claims.agent_id}"


class AgentTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <agent JWT>``: signature, kid and expiry here; scope, agent, task
    and revocation in ``integrations.agents.selectors``."""

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header:
            raise AppError(codes.AGENT_TOKEN_REQUIRED)
        if header[0].lower() != b"bearer" or len(header) != 2:
            raise AppError(codes.AGENT_TOKEN_INVALID, "Use 'Authorization: Bearer <token>'.")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise AppError(codes.AGENT_TOKEN_INVALID, "Malformed token.") from None
        claims = token_decode(raw)
        return AgentPrincipal(claims), claims

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class AgentTokenScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.agents.apis.AgentTokenAuthentication"
    name = "agentToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An agent JWT (HS256, kid header): scope 'agent' (minted by an operator) "
            "for heartbeat and alerts, scope 'task' (sent with a pushed task) for its manifest "
            "and reports.",
        }


class AgentApi(APIView):
    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [AllowAny]  # the token is the permission; see the selectors


def _iso(value) -> str | None:
    return serializers.DateTimeField().to_representation(value) if value else None


# ============================================================================== serializers


class ManifestContentSerializer(serializers.Serializer):
    """What an agent fetches; also the writable content of a manifest."""

    comfyui = serializers.DictField(help_text="{repo: http(s) URL, commit: 7-40 hex digits}")
    plugins = serializers.ListField(
        child=serializers.DictField(), default=list, help_text="[{name, repo, commit}]"
    )
    workflows = serializers.ListField(
        child=serializers.DictField(),
        default=list,
        help_text="[{name, url, sha256, size?, destPath}]",
    )
    models = serializers.ListField(
        child=serializers.DictField(),
        default=list,
        help_text="[{name, url, sha256, size, destPath}]",
    )


class AgentManifestOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="manifest_id")
    name = serializers.CharField(source="manifest.name")
    version = serializers.IntegerField()
    comfyui = serializers.DictField(source="content.comfyui")
    plugins = serializers.ListField(child=serializers.DictField(), source="content.plugins")
    workflows = serializers.ListField(child=serializers.DictField(), source="content.workflows")
    models = serializers.ListField(child=serializers.DictField(), source="content.models")


class AgentTaskStateSerializer(serializers.Serializer):
    taskId = serializers.CharField(source="public_id")
    status = serializers.ChoiceField(choices=AgentTask.Status.choices)
    progress = serializers.IntegerField()
    expiresAt = serializers.DateTimeField(source="expires_at")
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)


class AlertOutputSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    agent = serializers.IntegerField(source="agent_id")
    source = serializers.CharField()
    type = serializers.CharField()
    severity = serializers.ChoiceField(choices=Alert.Severity.choices)
    message = serializers.CharField(allow_blank=True)
    payload = serializers.DictField()
    acknowledgedAt = serializers.DateTimeField(source="acknowledged_at", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")


# ============================================================================== agent API


class AgentHeartbeatApi(AgentApi):
    class InputSerializer(serializers.Serializer):
        status = serializers.CharField(
            max_length=32,
            default="ok",
            help_text="The agent's own view, e.g. ok | busy | degraded. error | unhealthy | down "
            "(ComfyUI not serving) take the executor out of dispatch.",
        )
        cpu = serializers.FloatField(required=False, allow_null=True, min_value=0, default=None)
        mem = serializers.FloatField(required=False, allow_null=True, min_value=0, default=None)
        diskFreeGb = serializers.FloatField(
            required=False, allow_null=True, min_value=0, default=None
        )
        gpu = serializers.JSONField(required=False, allow_null=True, default=None)
        agentVersion = serializers.CharField(max_length=64, allow_blank=True, default="")
        comfyuiVersion = serializers.CharField(max_length=64, allow_blank=True, default="")
        metrics = serializers.DictField(default=dict)

    class OutputSerializer(serializers.Serializer):
        agentId = serializers.IntegerField()
        status = serializers.CharField()
        serverTime = serializers.DateTimeField()
        heartbeatInterval = serializers.IntegerField(help_text="Seconds between heartbeats.")
        offlineAfter = serializers.IntegerField(help_text="Seconds of silence before offline.")

    @extend_schema(
        summary="Heartbeat: metrics and versions; keeps the agent online and its executor healthy",
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(*AGENT_ERRORS)},
    )
    def post(self, request, agent_id: int):
        agent = agent_for_token(claims=request.auth, agent_id=agent_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        agent = agent_heartbeat(
            agent=agent,
            status=values["status"],
            cpu=values["cpu"],
            mem=values["mem"],
            disk_free_gb=values["diskFreeGb"],
            gpu=values["gpu"],
            agent_version=values["agentVersion"],
            comfyui_version=values["comfyuiVersion"],
            metrics=values["metrics"],
        )
        interval = settings.AGENT_HEARTBEAT_INTERVAL
        return Response(
            self.OutputSerializer(
                {
                    "agentId": agent.pk,
                    "status": agent.status,
                    "serverTime": timezone.now(),
                    "heartbeatInterval": interval,
                    "offlineAfter": MISSED_HEARTBEATS * interval,
                }
            ).data
        )


class AgentAlertsApi(AgentApi):
    class InputSerializer(serializers.Serializer):
        type = serializers.RegexField(
            r"^[A-Za-z0-9_.:-]{1,64}$", help_text="e.g. disk_low, gpu_error, sync_error"
        )
        message = serializers.CharField(max_length=2000, allow_blank=True, default="")
        severity = serializers.ChoiceField(choices=Alert.Severity.choices, default="warning")
        payload = serializers.DictField(default=dict)

    @extend_schema(
        summary="Raise an alert (recorded and pushed to staff as agent.alert)",
        request=InputSerializer,
        responses={201: AlertOutputSerializer, **error_responses(*AGENT_ERRORS)},
    )
    def post(self, request, agent_id: int):
        agent = agent_for_token(claims=request.auth, agent_id=agent_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        alert = alert_raise(agent=agent, **data.validated_data)
        return Response(AlertOutputSerializer(alert).data, status=status.HTTP_201_CREATED)


class AgentManifestApi(AgentApi):
    @extend_schema(
        summary="The manifest of the token's task (the version pinned when it was pushed)",
        responses={200: AgentManifestOutputSerializer, **error_responses(401, 403, 410, 429)},
    )
    def get(self, request, manifest_id: int):
        version = manifest_for_token(claims=request.auth, manifest_id=manifest_id)
        return Response(AgentManifestOutputSerializer(version).data)


class AgentTaskEventsApi(AgentApi):
    class InputSerializer(serializers.Serializer):
        type = serializers.RegexField(r"^[A-Za-z0-9_.:-]{1,32}$", default="progress")
        message = serializers.CharField(max_length=4000, allow_blank=True, default="")
        progress = serializers.IntegerField(
            min_value=0, max_value=100, required=False, allow_null=True, default=None
        )
        payload = serializers.DictField(default=dict)

    @extend_schema(
        summary="Report progress or a log line (a pending task becomes running)",
        request=InputSerializer,
        responses={201: AgentTaskStateSerializer, **error_responses(*AGENT_ERRORS, 409, 410)},
    )
    def post(self, request, task_id: str):
        task = agent_task_for_token(claims=request.auth, task_id=task_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        agent_task_report(task=task, **data.validated_data)
        return Response(AgentTaskStateSerializer(task).data, status=status.HTTP_201_CREATED)


class AgentTaskCompleteApi(AgentApi):
    class InputSerializer(serializers.Serializer):
        result = serializers.JSONField(required=False, allow_null=True, default=None)
        message = serializers.CharField(max_length=4000, allow_blank=True, default="")

    @extend_schema(
        summary="The task succeeded (repeating is a no-op)",
        request=InputSerializer,
        responses={200: AgentTaskStateSerializer, **error_responses(*AGENT_ERRORS, 409, 410)},
    )
    def post(self, request, task_id: str):
        task = agent_task_for_token(claims=request.auth, task_id=task_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = agent_task_complete(task=task, **data.validated_data)
        return Response(AgentTaskStateSerializer(task).data)


class AgentTaskFailedApi(AgentApi):
    class ErrorSerializer(serializers.Serializer):
        code = serializers.RegexField(r"^[A-Za-z0-9_.:-]{1,64}$", required=False)
        message = serializers.CharField(max_length=4000, allow_blank=True, required=False)

    class InputSerializer(serializers.Serializer):
        error = serializers.DictField(required=False, help_text="{code?, message?}")
        message = serializers.CharField(max_length=4000, allow_blank=True, default="")
        payload = serializers.DictField(default=dict)

    @extend_schema(
        summary="The task failed (repeating is a no-op)",
        request=InputSerializer,
        responses={200: AgentTaskStateSerializer, **error_responses(*AGENT_ERRORS, 409, 410)},
    )
    def post(self, request, task_id: str):
        task = agent_task_for_token(claims=request.auth, task_id=task_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        error = self.ErrorSerializer(data=data.validated_data.get("error") or {})
        if not error.is_valid():
            raise serializers.ValidationError({"error": error.errors})
        task = agent_task_fail(
            task=task,
            error_code=error.validated_data.get("code", ""),
            error_message=error.validated_data.get("message") or data.validated_data["message"],
            payload=data.validated_data["payload"],
        )
        return Response(AgentTaskStateSerializer(task).data)


# ============================================================================== admin: agents


class AgentTokenInfoSerializer(serializers.Serializer):
    """About the last minted token; never the token itself."""

    version = serializers.IntegerField(source="token_version")
    kid = serializers.CharField(source="token_kid", allow_blank=True)
    issuedAt = serializers.DateTimeField(source="token_issued_at", allow_null=True)
    expiresAt = serializers.DateTimeField(source="token_expires_at", allow_null=True)
    revokedAt = serializers.DateTimeField(source="tokens_revoked_at", allow_null=True)


class AgentManifestRefSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="manifest_id")
    name = serializers.CharField(source="manifest.name")
    version = serializers.IntegerField()


class AgentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    executor = serializers.IntegerField(source="executor_id")
    baseUrl = serializers.CharField(source="base_url")
    enabled = serializers.BooleanField()
    description = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=Agent.Status.choices)
    statusChangedAt = serializers.DateTimeField(source="status_changed_at", allow_null=True)
    lastHeartbeatAt = serializers.DateTimeField(source="last_heartbeat_at", allow_null=True)
    reportedStatus = serializers.CharField(source="reported_status", allow_blank=True)
    agentVersion = serializers.CharField(source="agent_version", allow_blank=True)
    comfyuiVersion = serializers.CharField(source="comfyui_version", allow_blank=True)
    metrics = serializers.DictField()
    manifest = AgentManifestRefSerializer(
        source="manifest_version", allow_null=True, help_text="Last successful sync."
    )
    token = AgentTokenInfoSerializer(source="*")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


AGENT_FIELDS = {"baseUrl": "base_url"}


def _agent_values(validated: dict) -> dict:
    values = rename_keys(validated, AGENT_FIELDS)
    if "executor" in values:
        values["executor"] = executor_get(executor_id=values["executor"])
    return values


class AdminAgentsApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        executor = serializers.IntegerField(
            help_text="The ComfyUI executor the agent runs next to."
        )
        baseUrl = serializers.CharField(max_length=500, help_text="PODI pushes to {baseUrl}/tasks.")
        enabled = serializers.BooleanField(default=True)
        description = serializers.CharField(allow_blank=True, default="")

    @extend_schema(
        summary="List agents",
        operation_id="admin_agents_list",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Agent.Status.values),
            OpenApiParameter("enabled", OpenApiTypes.BOOL),
            OpenApiParameter("executor", OpenApiTypes.INT),
            OpenApiParameter("search", OpenApiTypes.STR),
        ],
        responses={
            200: page_of("AgentPage", AgentOutputSerializer(many=True)),
            **error_responses(*ADMIN_ERRORS),
        },
    )
    def get(self, request):
        query = agents_queryset().order_by("name")
        if value := request.query_params.get("status"):
            query = query.filter(status=value)
        if (enabled := query_flag(request, "enabled")) is not None:
            query = query.filter(enabled=enabled)
        if (executor := query_int(request, "executor")) is not None:
            query = query.filter(executor_id=executor)
        if search := request.query_params.get("search"):
            query = query.filter(Q(name__icontains=search) | Q(base_url__icontains=search))
        return paginate(request, query, AgentOutputSerializer)

    @extend_schema(
        summary="Register an agent (then mint its token)",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: AgentOutputSerializer, **error_responses(*ADMIN_ERRORS, 404, 409)},
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        agent = agent_create(**_agent_values(data.validated_data))
        return Response(
            AgentOutputSerializer(agent_get(agent_id=agent.pk)).data, status=status.HTTP_201_CREATED
        )


class AdminAgentApi(AdminApi):
    @extend_schema(
        summary="Get an agent (liveness, versions, metrics; never a token)",
        responses={200: AgentOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, agent_id: int):
        return Response(AgentOutputSerializer(agent_get(agent_id=agent_id)).data)

    @extend_schema(
        summary="Change an agent",
        request=AdminAgentsApi.InputSerializer(partial=True),
        responses={200: AgentOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def patch(self, request, agent_id: int):
        agent = agent_get(agent_id=agent_id)
        data = AdminAgentsApi.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        agent = agent_update(agent=agent, **_agent_values(data.validated_data))
        return Response(AgentOutputSerializer(agent_get(agent_id=agent.pk)).data)

    @extend_schema(
        summary="Delete an agent with its tasks and alerts",
        responses={204: None, **error_responses(401, 403, 404, 409)},
    )
    def delete(self, request, agent_id: int):
        agent_delete(agent=agent_get(agent_id=agent_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AdminAgentTokenApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        revokeExisting = serializers.BooleanField(
            default=False, help_text="Revoke every earlier token of this agent first."
        )

    class OutputSerializer(serializers.Serializer):
        agentId = serializers.IntegerField()
        token = serializers.CharField(help_text="Shown once; PODI does not keep it.")
        tokenType = serializers.CharField()
        scope = serializers.CharField()
        kid = serializers.CharField()
        issuedAt = serializers.DateTimeField()
        expiresAt = serializers.DateTimeField()
        expiresIn = serializers.IntegerField()

    @extend_schema(
        summary="Mint an agent token (scope agent, AGENT_HEARTBEAT_TOKEN_TTL); shown once",
        request=InputSerializer,
        responses={201: OutputSerializer, **error_responses(*ADMIN_ERRORS, 404, 503)},
    )
    def post(self, request, agent_id: int):
        agent = agent_get(agent_id=agent_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if data.validated_data["revokeExisting"]:
            agent = agent_tokens_revoke(agent=agent)
        minted = agent_token_mint(agent=agent)
        response = Response(
            self.OutputSerializer(
                {
                    "agentId": agent.pk,
                    "token": minted.token,
                    "tokenType": "Bearer",
                    "scope": minted.scope,
                    "kid": minted.kid,
                    "issuedAt": minted.issued_at,
                    "expiresAt": minted.expires_at,
                    "expiresIn": minted.expires_in,
                }
            ).data,
            status=status.HTTP_201_CREATED,
        )
        response["Cache-Control"] = "no-store"
        return response


class AdminAgentRevokeTokensApi(AdminApi):
    @extend_schema(
        summary="Revoke every token of an agent (agent and task tokens)",
        request=None,
        responses={200: AgentOutputSerializer, **error_responses(401, 403, 404)},
    )
    def post(self, request, agent_id: int):
        agent = agent_tokens_revoke(agent=agent_get(agent_id=agent_id))
        return Response(AgentOutputSerializer(agent_get(agent_id=agent.pk)).data)


class AdminAgentAlertsApi(AdminApi):
    @extend_schema(
        summary="An agent's alerts, newest first",
        operation_id="admin_agent_alerts_list",
        parameters=[
            OpenApiParameter("type", OpenApiTypes.STR),
            OpenApiParameter("acknowledged", OpenApiTypes.BOOL),
        ],
        responses={
            200: page_of("AlertPage", AlertOutputSerializer(many=True)),
            **error_responses(*ADMIN_ERRORS, 404),
        },
    )
    def get(self, request, agent_id: int):
        agent = agent_get(agent_id=agent_id)
        query = agent.alerts.order_by("-created_at", "-pk")
        if value := request.query_params.get("type"):
            query = query.filter(type=value)
        if (acknowledged := query_flag(request, "acknowledged")) is not None:
            query = query.filter(acknowledged_at__isnull=not acknowledged)
        return paginate(request, query, AlertOutputSerializer)


# ============================================================================== admin: agent tasks


class AgentTaskEventSerializer(serializers.Serializer):
    source = serializers.CharField()
    type = serializers.CharField()
    message = serializers.CharField(allow_blank=True)
    progress = serializers.IntegerField(allow_null=True)
    payload = serializers.DictField()
    createdAt = serializers.DateTimeField(source="created_at")


class AgentTaskErrorSerializer(serializers.Serializer):
    code = serializers.CharField(source="error_code")
    message = serializers.CharField(source="error_message")


class AgentTaskOutputSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    agent = serializers.IntegerField(source="agent_id")
    actions = serializers.ListField(child=serializers.ChoiceField(choices=AgentTaskAction.choices))
    manifest = AgentManifestRefSerializer(source="manifest_version", allow_null=True)
    status = serializers.ChoiceField(choices=AgentTask.Status.choices)
    progress = serializers.IntegerField()
    expiresAt = serializers.DateTimeField(source="expires_at")
    pushAttempts = serializers.IntegerField(source="push_attempts")
    lastPushAt = serializers.DateTimeField(source="last_push_at", allow_null=True)
    lastPushError = serializers.CharField(source="last_push_error", allow_blank=True)
    nextPushAt = serializers.DateTimeField(source="next_push_at", allow_null=True)
    acceptedAt = serializers.DateTimeField(source="accepted_at", allow_null=True)
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)
    result = serializers.JSONField(allow_null=True)
    error = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")

    def get_error(self, obj) -> dict | None:
        if not obj.error_code:
            return None
        return {"code": obj.error_code, "message": obj.error_message}


class AgentTaskDetailSerializer(AgentTaskOutputSerializer):
    events = AgentTaskEventSerializer(many=True, source="events.all")


class AdminAgentTasksApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        actions = serializers.ListField(
            child=serializers.ChoiceField(choices=AgentTaskAction.choices), allow_empty=False
        )
        manifest = serializers.IntegerField(
            required=False, allow_null=True, default=None, help_text="Manifest id (sync actions)."
        )
        manifestVersion = serializers.IntegerField(
            required=False, allow_null=True, default=None, min_value=1, help_text="Default: latest."
        )
        ttlSeconds = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            help_text="Seconds until the task expires (default AGENT_TASK_TOKEN_TTL).",
        )

    @extend_schema(
        summary="An agent's sync tasks, newest first",
        operation_id="admin_agent_tasks_list",
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=AgentTask.Status.values)],
        responses={
            200: page_of("AgentTaskPage", AgentTaskOutputSerializer(many=True)),
            **error_responses(*ADMIN_ERRORS, 404),
        },
    )
    def get(self, request, agent_id: int):
        agent = agent_get(agent_id=agent_id)
        query = agent_tasks_queryset().filter(agent=agent).order_by("-created_at", "-pk")
        if value := request.query_params.get("status"):
            query = query.filter(status=value)
        return paginate(request, query, AgentTaskOutputSerializer)

    @extend_schema(
        summary="Create a sync task and push it to the agent now (409 busy → retried later)",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: AgentTaskDetailSerializer, **error_responses(*ADMIN_ERRORS, 404, 409)},
    )
    @idempotent
    def post(self, request, agent_id: int):
        agent = agent_get(agent_id=agent_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        manifest = (
            manifest_get(manifest_id=values["manifest"]) if values["manifest"] is not None else None
        )
        task = agent_task_create(
            agent=agent,
            actions=values["actions"],
            manifest=manifest,
            manifest_version=values["manifestVersion"],
            ttl_seconds=values["ttlSeconds"],
            created_by=request.user if getattr(request.user, "is_authenticated", False) else None,
        )
        task = agent_task_get(agent=agent, task_id=task.public_id)
        return Response(AgentTaskDetailSerializer(task).data, status=status.HTTP_201_CREATED)


class AdminAgentTaskApi(AdminApi):
    @extend_schema(
        summary="One sync task with its events",
        responses={200: AgentTaskDetailSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, agent_id: int, task_id: str):
        task = agent_task_get(agent=agent_get(agent_id=agent_id), task_id=task_id)
        return Response(AgentTaskDetailSerializer(task).data)


# ============================================================================== admin: manifests


class ManifestOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    version = serializers.IntegerField(source="latest_version.version")
    comfyui = serializers.DictField(source="latest_version.content.comfyui")
    plugins = serializers.ListField(
        child=serializers.DictField(), source="latest_version.content.plugins"
    )
    workflows = serializers.ListField(
        child=serializers.DictField(), source="latest_version.content.workflows"
    )
    models = serializers.ListField(
        child=serializers.DictField(), source="latest_version.content.models"
    )
    changelog = serializers.CharField(source="latest_version.changelog", allow_blank=True)
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


class ManifestVersionOutputSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    comfyui = serializers.DictField(source="content.comfyui")
    plugins = serializers.ListField(child=serializers.DictField(), source="content.plugins")
    workflows = serializers.ListField(child=serializers.DictField(), source="content.workflows")
    models = serializers.ListField(child=serializers.DictField(), source="content.models")
    changelog = serializers.CharField(allow_blank=True)
    createdAt = serializers.DateTimeField(source="created_at")


CONTENT_KEYS = ("comfyui", "plugins", "workflows", "models")


def _content_of(raw: dict, current: ManifestVersion | None = None) -> dict | None:
    """The manifest content in a request body: given sections over the current version's."""
    if not any(key in raw for key in CONTENT_KEYS):
        return None
    base = dict(current.content) if current is not None else {}
    return {**base, **{key: raw[key] for key in CONTENT_KEYS if key in raw}}


class AdminManifestsApi(AdminApi):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        description = serializers.CharField(allow_blank=True, default="")
        comfyui = serializers.JSONField(help_text="{repo, commit}")
        plugins = serializers.JSONField(required=False, help_text="[{name, repo, commit}]")
        workflows = serializers.JSONField(
            required=False, help_text="[{name, url, sha256, size?, destPath}]"
        )
        models = serializers.JSONField(
            required=False, help_text="[{name, url, sha256, size, destPath}]"
        )
        changelog = serializers.CharField(allow_blank=True, default="")

    @extend_schema(
        summary="List manifests (their latest version)",
        operation_id="admin_manifests_list",
        parameters=[OpenApiParameter("search", OpenApiTypes.STR)],
        responses={
            200: page_of("ManifestPage", ManifestOutputSerializer(many=True)),
            **error_responses(*ADMIN_ERRORS),
        },
    )
    def get(self, request):
        query = manifests_queryset().order_by("name")
        if search := request.query_params.get("search"):
            query = query.filter(name__icontains=search)
        return paginate(request, query, ManifestOutputSerializer)

    @extend_schema(
        summary="Create a manifest (version 1); 400 VALIDATION_ERROR names every bad field path",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: ManifestOutputSerializer, **error_responses(*ADMIN_ERRORS, 409)},
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        manifest = manifest_create(
            name=values["name"],
            description=values["description"],
            content=_content_of(request.data),
            changelog=values["changelog"],
            created_by=request.user if getattr(request.user, "is_authenticated", False) else None,
        )
        return Response(
            ManifestOutputSerializer(manifest_get(manifest_id=manifest.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class AdminManifestApi(AdminApi):
    @extend_schema(
        summary="Get a manifest (its latest version)",
        responses={200: ManifestOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def get(self, request, manifest_id: int):
        return Response(ManifestOutputSerializer(manifest_get(manifest_id=manifest_id)).data)

    @extend_schema(
        summary="Change a manifest: content sections given make a new version if they differ",
        request=AdminManifestsApi.InputSerializer(partial=True),
        responses={200: ManifestOutputSerializer, **error_responses(*ADMIN_ERRORS, 404)},
    )
    def patch(self, request, manifest_id: int):
        manifest = manifest_get(manifest_id=manifest_id)
        data = AdminManifestsApi.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        manifest = manifest_update(
            manifest=manifest,
            content=_content_of(request.data, manifest.latest_version),
            changelog=values.get("changelog", ""),
            created_by=request.user if getattr(request.user, "is_authenticated", False) else None,
            **{k: values[k] for k in ("name", "description") if k in values},
        )
        return Response(ManifestOutputSerializer(manifest_get(manifest_id=manifest.pk)).data)

    @extend_schema(
        summary="Delete a manifest and its versions (409 RESOURCE_IN_USE while tasks use it)",
        responses={204: None, **error_responses(401, 403, 404, 409)},
    )
    def delete(self, request, manifest_id: int):
        manifest_delete(manifest=manifest_get(manifest_id=manifest_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AdminManifestVersionsApi(AdminApi):
    @extend_schema(
        summary="A manifest's versions, newest first",
        operation_id="admin_manifest_versions_list",
        responses={
            200: page_of("ManifestVersionPage", ManifestVersionOutputSerializer(many=True)),
            **error_responses(*ADMIN_ERRORS, 404),
        },
    )
    def get(self, request, manifest_id: int):
        manifest = manifest_get(manifest_id=manifest_id)
        return paginate(
            request, manifest.versions.order_by("-version"), ManifestVersionOutputSerializer
        )


__all__ = [
    "AdminAgentAlertsApi",
    "AdminAgentApi",
    "AdminAgentRevokeTokensApi",
    "AdminAgentTaskApi",
    "AdminAgentTasksApi",
    "AdminAgentTokenApi",
    "AdminAgentsApi",
    "AdminManifestApi",
    "AdminManifestVersionsApi",
    "AdminManifestsApi",
    "AgentAlertsApi",
    "AgentHeartbeatApi",
    "AgentManifestApi",
    "AgentTaskCompleteApi",
    "AgentTaskEventsApi",
    "AgentTaskFailedApi",
    "AgentTokenAuthentication",
]
