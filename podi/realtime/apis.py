"""Notification routes (``/api/notify/v1/``): ``POST event``. The stream is in ``consumers``."""

from __future__ import annotations

import json

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from podi.auth import acting_user, is_staff_principal, principal_of
from podi.errors import validation_error
from podi.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from podi.realtime.services import notify_event_push
from podi.schema import error_responses

MAX_PAYLOAD_BYTES = 64 * 1024
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"


class StaffOrNotifyKey(BasePermission):
    """Staff users and admin keys; service keys with ``notify:write`` (checked by ScopePermission).

    A key created for a user pushes only to that user's stream (``acting_user``)."""

    def has_permission(self, request, view) -> bool:
        return is_staff_principal(request) or principal_of(request).is_key


class NotifyEventApi(APIView):
    scope_area = "notify"

    class InputSerializer(serializers.Serializer):
        userId = serializers.IntegerField(
            min_value=1, required=False, allow_null=True, help_text="Whose stream (default: yours)."
        )
        type = serializers.RegexField(
            EVENT_TYPE_PATTERN,
            max_length=64,
            help_text="Dotted lower-case name, e.g. task.status, wallet.points, system.notice.",
        )
        payload = serializers.DictField(required=False, default=dict)

    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        seq = serializers.IntegerField(allow_null=True)
        type = serializers.CharField()
        userId = serializers.IntegerField()
        payload = serializers.DictField()
        timestamp = serializers.CharField()

    def get_permissions(self):
        return [*super().get_permissions(), StaffOrNotifyKey()]

    @extend_schema(
        request=InputSerializer,
        responses={201: OutputSerializer, **error_responses(400, 401, 403, 404, 409, 429)},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Push an event to a user's stream (staff, or a notify:write key)",
        description="Persisted with the user's next seq and sent to their WebSocket subscribers "
        "after commit, like any event PODI raises.",
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        payload = values["payload"]
        if len(json.dumps(payload, default=str).encode()) > MAX_PAYLOAD_BYTES:
            raise validation_error({"payload": [f"At most {MAX_PAYLOAD_BYTES} bytes of JSON."]})
        user = acting_user(request, values.get("userId"))
        event = notify_event_push(user=user, type=values["type"], payload=payload)
        return Response(self.OutputSerializer(event).data, status=201)
