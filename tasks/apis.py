"""Task routes (``/api/tasks/v1``) and ``POST /api/abilities/{id}/invoke``."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations.error_codes import ABILITY_NOT_FOUND
from integrations.models import Ability
from media_app.services import signed_download_url
from podi.access import READ, WRITE
from podi.auth import acting_user, is_staff_principal, principal_of, service_key_of
from podi.errors import AppError, validation_error
from podi.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from podi.pagination import paginate
from podi.realtime.selectors import task_events
from podi.schema import error_responses, page_of
from tasks import error_codes as codes
from tasks.models import Task, TaskAsset, TaskStatus, TaskTemplate
from tasks.selectors import (
    batch_get_for_principal,
    batch_summary,
    task_get_for_principal,
    tasks_for_user,
    template_get,
)
from tasks.services import (
    CALLBACK_EVENT_TYPES,
    batch_submit,
    queue_position,
    task_cancel,
    task_complete_receipt,
    task_from_token,
    task_retry,
    task_submit,
    template_create_batch,
)

MAX_WAIT_SECONDS = 60
OUTPUT_URL_TTL = 3600


class InputItemSerializer(serializers.Serializer):
    objectKey = serializers.CharField(required=False, max_length=1024)
    url = serializers.CharField(required=False, max_length=2000)
    base64 = serializers.CharField(required=False)
    fileName = serializers.CharField(required=False, max_length=200)


class OutputItemSerializer(serializers.Serializer):
    objectKey = serializers.CharField()
    url = serializers.CharField()
    mimeType = serializers.CharField()
    size = serializers.IntegerField(allow_null=True)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)


class TaskErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class TaskSerializer(serializers.Serializer):
    """The public shape of a task (README "Tasks: submit, dispatch, follow")."""

    taskId = serializers.CharField(source="public_id")
    action = serializers.CharField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    progress = serializers.IntegerField()
    queuePosition = serializers.SerializerMethodField()
    params = serializers.JSONField()
    inputs = serializers.JSONField()
    outputs = serializers.SerializerMethodField()
    result = serializers.JSONField(allow_null=True)
    error = serializers.SerializerMethodField()
    points = serializers.IntegerField()
    holdId = serializers.CharField(source="hold_id", allow_blank=True)
    executor = serializers.SerializerMethodField()
    attempts = serializers.IntegerField()
    priority = serializers.IntegerField()
    clientRef = serializers.CharField(source="client_ref", allow_blank=True)
    batchId = serializers.SerializerMethodField()
    originalTaskId = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_queuePosition(self, task: Task) -> int | None:  # noqa: N802
        return queue_position(task) if self.context.get("with_position") else None

    @extend_schema_field(OutputItemSerializer(many=True))
    def get_outputs(self, task: Task) -> list[dict]:
        assets = [a for a in task.assets.all() if a.kind == TaskAsset.Kind.OUTPUT]
        items = []
        for asset in assets:
            url, _ = signed_download_url(object_key=asset.object_key, ttl=OUTPUT_URL_TTL)
            item = {
                "objectKey": asset.object_key,
                "url": url,
                "mimeType": asset.mime_type,
                "size": asset.size,
            }
            if asset.width:
                item["width"] = asset.width
                item["height"] = asset.height
            items.append(item)
        return items

    @extend_schema_field(TaskErrorSerializer(allow_null=True))
    def get_error(self, task: Task) -> dict | None:
        if not task.error_code:
            return None
        return {"code": task.error_code, "message": task.error_message}

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_executor(self, task: Task) -> str | None:
        return task.executor.name if task.executor_id else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_batchId(self, task: Task) -> str | None:  # noqa: N802
        return task.batch.public_id if task.batch_id else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_originalTaskId(self, task: Task) -> str | None:  # noqa: N802
        return task.original_task.public_id if task.original_task_id else None


def serialize_task(task: Task, *, with_position: bool = True) -> dict:
    return TaskSerializer(task, context={"with_position": with_position}).data


class TaskSubmitApi(APIView):
    scope_area = "tasks"

    class InputSerializer(serializers.Serializer):
        action = serializers.CharField(max_length=100)
        params = serializers.DictField(required=False)
        workflowParams = serializers.DictField(required=False, help_text="Alias of params.")
        inputs = InputItemSerializer(many=True, required=False)
        priority = serializers.IntegerField(
            required=False,
            default=0,
            min_value=-100,
            max_value=100,
            help_text="Higher starts first. Users: within ±TASK_USER_PRIORITY_MAX (10); "
            "staff and admin-scope keys: -100…100.",
        )
        callbackUrl = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        callbackEvents = serializers.ListField(
            child=serializers.ChoiceField(choices=sorted(CALLBACK_EVENT_TYPES)), required=False
        )
        clientRef = serializers.CharField(required=False, allow_blank=True, max_length=200)
        preset = serializers.CharField(required=False, allow_blank=True, max_length=100)
        userId = serializers.IntegerField(required=False, help_text="Staff and service keys only.")

    class OutputSerializer(serializers.Serializer):
        taskId = serializers.CharField()
        status = serializers.CharField()
        points = serializers.IntegerField()
        holdId = serializers.CharField(allow_blank=True)
        createdAt = serializers.DateTimeField()

    @extend_schema(
        request=InputSerializer,
        responses={202: OutputSerializer, **error_responses(400, 401, 402, 403, 404, 409, 503)},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Submit a task",
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        bound = settings.TASK_USER_PRIORITY_MAX
        if abs(values.get("priority", 0)) > bound and not is_staff_principal(request):
            raise validation_error(
                {"priority": [f"Must be between -{bound} and {bound} (wider for staff only)."]}
            )
        user = acting_user(request, values.get("userId"))
        with transaction.atomic():
            task = task_submit(
                user=user,
                action=values["action"],
                params=values.get("params", values.get("workflowParams")) or {},
                inputs=request.data.get("inputs") or [],
                priority=values.get("priority", 0),
                callback_url=values.get("callbackUrl") or "",
                callback_events=values.get("callbackEvents"),
                client_ref=values.get("clientRef") or "",
                preset=values.get("preset") or None,
                service_key=service_key_of(request),
            )
        return Response(
            self.OutputSerializer(
                {
                    "taskId": task.public_id,
                    "status": task.status,
                    "points": task.points,
                    "holdId": task.hold_id,
                    "createdAt": task.created_at,
                }
            ).data,
            status=202,
        )


class TaskListApi(APIView):
    scope_area = "tasks"

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
        action = serializers.CharField(required=False, max_length=100)
        batchId = serializers.CharField(required=False, max_length=32)
        userId = serializers.IntegerField(required=False)
        # "from" is a Python keyword: declared below.

    FilterSerializer._declared_fields["from"] = serializers.DateTimeField(required=False)
    FilterSerializer._declared_fields["to"] = serializers.DateTimeField(required=False)

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=[s.value for s in TaskStatus]),
            OpenApiParameter("action", str),
            OpenApiParameter("batchId", str),
            OpenApiParameter("userId", int, description="Staff and service keys only."),
            OpenApiParameter("from", str, description="ISO 8601 date-time, inclusive."),
            OpenApiParameter("to", str, description="ISO 8601 date-time, exclusive."),
            OpenApiParameter("page", int),
            OpenApiParameter("pageSize", int),
        ],
        responses={
            200: page_of("TaskPage", TaskSerializer(many=True)),
            **error_responses(400, 401, 403),
        },
        summary="The caller's tasks, newest first",
        operation_id="tasks_list",
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        values = filters.validated_data
        user = acting_user(request, values.get("userId"))
        queryset = tasks_for_user(
            user=user,
            status=values.get("status"),
            action=values.get("action"),
            batch_id=values.get("batchId"),
            created_from=values.get("from"),
            created_to=values.get("to"),
        )
        return paginate(request, queryset, _ListTaskSerializer)


class _ListTaskSerializer(TaskSerializer):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context", {})["with_position"] = False
        super().__init__(*args, **kwargs)


class TaskDetailApi(APIView):
    scope_area = "tasks"

    @extend_schema(
        responses={200: TaskSerializer, **error_responses(401, 404)},
        summary="A task",
        operation_id="tasks_retrieve",
    )
    def get(self, request, task_id: str):
        task = task_get_for_principal(principal_of(request), task_id, action=READ)
        return Response(serialize_task(task))


class TaskCancelApi(APIView):
    scope_area = "tasks"

    @extend_schema(
        request=None,
        responses={200: TaskSerializer, **error_responses(401, 404, 409)},
        summary="Cancel a queued or running task (its hold is released)",
    )
    def post(self, request, task_id: str):
        task = task_get_for_principal(principal_of(request), task_id, action=WRITE)
        task = task_cancel(task=task)
        return Response(serialize_task(task))


class TaskRetryApi(APIView):
    scope_area = "tasks"

    class OutputSerializer(serializers.Serializer):
        taskId = serializers.CharField()
        originalTaskId = serializers.CharField()
        status = serializers.CharField()
        points = serializers.IntegerField()
        holdId = serializers.CharField(allow_blank=True)

    @extend_schema(
        request=None,
        responses={202: OutputSerializer, **error_responses(401, 402, 404, 409, 503)},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Retry a failed or canceled task as a new task",
    )
    @idempotent
    def post(self, request, task_id: str):
        original = task_get_for_principal(principal_of(request), task_id, action=WRITE)
        with transaction.atomic():
            task = task_retry(task=original)
        return Response(
            self.OutputSerializer(
                {
                    "taskId": task.public_id,
                    "originalTaskId": original.public_id,
                    "status": task.status,
                    "points": task.points,
                    "holdId": task.hold_id,
                }
            ).data,
            status=202,
        )


class EventSerializer(serializers.Serializer):
    id = serializers.CharField()
    seq = serializers.IntegerField()
    type = serializers.CharField()
    payload = serializers.JSONField()
    timestamp = serializers.DateTimeField()


class TaskEventsApi(APIView):
    scope_area = "tasks"

    @extend_schema(
        parameters=[OpenApiParameter("after", int, description="Only events with a larger seq.")],
        responses={
            200: inline_serializer("TaskEventList", {"items": EventSerializer(many=True)}),
            **error_responses(400, 401, 404),
        },
        summary="The task's persisted events, in order",
    )
    def get(self, request, task_id: str):
        task = task_get_for_principal(principal_of(request), task_id, action=READ)
        after = request.query_params.get("after")
        if after is not None:
            try:
                after = int(after)
            except ValueError:
                raise validation_error({"after": ["Must be an integer."]}) from None
        events = task_events(user_id=task.user_id, task_id=task.public_id, after=after)
        return Response({"items": EventSerializer(events, many=True).data})


class TaskCompleteApi(APIView):
    """A receipt from the executor (or a node inside the workflow) for its own task."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=["succeeded", "failed"])
        outputs = serializers.ListField(child=serializers.DictField(), required=False)
        result = serializers.JSONField(required=False, allow_null=True)
        error = serializers.DictField(required=False)

    @extend_schema(
        request=InputSerializer,
        responses={200: TaskSerializer, **error_responses(400, 401, 409)},
        auth=[],
        description="The token is bound to the attempt it was issued for: a token of an earlier "
        "attempt (or of one that was given up and queued again) is 409 `TASK_ATTEMPT_STALE`.",
        parameters=[
            OpenApiParameter(
                "token", str, description="The task token (or send it as a Bearer token)."
            )
        ],
        summary="Report a task's outcome (authenticated by the task's own token)",
    )
    def post(self, request, task_id: str):
        header = request.headers.get("Authorization", "")
        raw = header[7:].strip() if header.lower().startswith("bearer ") else ""
        raw = raw or request.query_params.get("token", "")
        if not raw:
            raise AppError(codes.TASK_TOKEN_INVALID, "Send the task token.")
        task, attempt = task_from_token(raw)
        if task.public_id != task_id:
            raise AppError(codes.TASK_TOKEN_INVALID, "The token is for another task.")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        task = task_complete_receipt(
            task=task,
            attempt=attempt,
            status=values["status"],
            outputs=values.get("outputs"),
            result=values.get("result"),
            error=values.get("error"),
        )
        return Response(serialize_task(task))


class BatchSubmitApi(APIView):
    scope_area = "tasks"

    class InputSerializer(serializers.Serializer):
        class ItemSerializer(serializers.Serializer):
            params = serializers.DictField(required=False)
            inputs = InputItemSerializer(many=True, required=False)
            clientRef = serializers.CharField(required=False, allow_blank=True, max_length=200)

        action = serializers.CharField(max_length=100)
        items = ItemSerializer(many=True)
        callbackUrl = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        userId = serializers.IntegerField(required=False)

    class OutputSerializer(serializers.Serializer):
        batchId = serializers.CharField()
        taskIds = serializers.ListField(child=serializers.CharField())
        points = serializers.IntegerField()

    @extend_schema(
        request=InputSerializer,
        responses={202: OutputSerializer, **error_responses(400, 401, 402, 404, 409, 503)},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Submit many tasks of one ability, all or nothing",
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user = acting_user(request, values.get("userId"))
        with transaction.atomic():
            batch, tasks = batch_submit(
                user=user,
                action=values["action"],
                items=request.data.get("items") or [],
                callback_url=values.get("callbackUrl") or "",
                service_key=service_key_of(request),
            )
        return Response(
            {
                "batchId": batch.public_id,
                "taskIds": [t.public_id for t in tasks],
                "points": batch.points,
            },
            status=202,
        )


class BatchDetailApi(APIView):
    scope_area = "tasks"

    @extend_schema(
        responses={
            200: inline_serializer(
                "BatchSummary",
                {
                    "batchId": serializers.CharField(),
                    "action": serializers.CharField(),
                    "status": serializers.ChoiceField(
                        choices=["queued", "running", "succeeded", "partial", "failed", "canceled"]
                    ),
                    "progress": serializers.IntegerField(),
                    "total": serializers.IntegerField(),
                    "counts": serializers.DictField(child=serializers.IntegerField()),
                    "points": serializers.IntegerField(),
                    "taskIds": serializers.ListField(child=serializers.CharField()),
                    "createdAt": serializers.DateTimeField(),
                },
            ),
            **error_responses(401, 404),
        },
        summary="A batch: counts by status, overall status and progress",
    )
    def get(self, request, batch_id: str):
        batch = batch_get_for_principal(principal_of(request), batch_id, action=READ)
        return Response(batch_summary(batch))


class TemplateSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    description = serializers.CharField()
    action = serializers.CharField(source="ability.code")
    params = serializers.JSONField()
    itemCount = serializers.SerializerMethodField()

    def get_itemCount(self, template: TaskTemplate) -> int:  # noqa: N802
        return len(template.items or [])


class TemplateListApi(APIView):
    scope_area = "tasks"

    @extend_schema(
        responses={
            200: page_of("TemplatePage", TemplateSerializer(many=True)),
            **error_responses(401),
        },
        summary="Task templates",
    )
    def get(self, request):
        queryset = TaskTemplate.objects.filter(enabled=True).select_related("ability")
        return paginate(request, queryset, TemplateSerializer)


class TemplateCreateTaskApi(APIView):
    scope_area = "tasks"

    class InputSerializer(serializers.Serializer):
        overrides = serializers.DictField(required=False)
        userId = serializers.IntegerField(required=False)

    @extend_schema(
        request=InputSerializer,
        responses={202: BatchSubmitApi.OutputSerializer, **error_responses(400, 401, 402, 404)},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Create a batch from a template's items",
    )
    @idempotent
    def post(self, request, template_id: str):
        template = template_get(template_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = acting_user(request, data.validated_data.get("userId"))
        with transaction.atomic():
            batch, tasks = template_create_batch(
                user=user, template=template, overrides=data.validated_data.get("overrides")
            )
        return Response(
            {
                "batchId": batch.public_id,
                "taskIds": [t.public_id for t in tasks],
                "points": batch.points,
            },
            status=202,
        )


class AbilityInvokeApi(APIView):
    scope_area = "tasks"

    class InputSerializer(serializers.Serializer):
        params = serializers.DictField(required=False)
        inputs = InputItemSerializer(many=True, required=False)
        wait = serializers.IntegerField(required=False, default=0, min_value=0, max_value=60)
        callbackUrl = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        clientRef = serializers.CharField(required=False, allow_blank=True, max_length=200)
        preset = serializers.CharField(required=False, allow_blank=True, max_length=100)
        userId = serializers.IntegerField(required=False)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: TaskSerializer,
            202: inline_serializer("InvokeAccepted", {"taskId": serializers.CharField()}),
            **error_responses(400, 401, 402, 404, 503),
        },
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Invoke an ability; wait up to `wait` seconds for the result",
    )
    @idempotent
    def post(self, request, ability_id: int):
        ability = Ability.objects.filter(pk=ability_id, status="active").first()
        if ability is None:
            raise AppError(ABILITY_NOT_FOUND)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user = acting_user(request, values.get("userId"))
        with transaction.atomic():
            task = task_submit(
                user=user,
                action=ability.code,
                params=values.get("params") or {},
                inputs=request.data.get("inputs") or [],
                callback_url=values.get("callbackUrl") or "",
                client_ref=values.get("clientRef") or "",
                preset=values.get("preset") or None,
                service_key=service_key_of(request),
            )
        deadline = time.monotonic() + values.get("wait", 0)
        delay = 0.05
        while time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)
            task.refresh_from_db()
            if task.is_terminal:
                return Response(serialize_task(task), status=200)
        return Response({"taskId": task.public_id}, status=202)
