"""Wallet API, ``/api/wallet/v1`` (docs/adr/0003-wallet.md).

Who may do what:
- a user, and a service key created for a user, read and write only that user's account
  (``userId`` omitted or their own id);
- staff, and service-account keys with ``wallet:read``/``wallet:write``, act for any ``userId``;
- ``grant`` is for staff and service-account ``wallet:write`` keys only;
- a hold may name only its user's own task (``taskId`` of another user's task: 404
  ``WALLET_TASK_NOT_FOUND``);
- ``confirm``/``release`` of a hold the caller may not see is 404 ``WALLET_HOLD_NOT_FOUND``. A
  user may settle only the holds they froze themselves through this API: a task's hold is
  settled by the task (or staff / a ``wallet:write`` key), never by its owner.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django.db import transaction
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from podi import error_codes as podi_codes
from podi.access import WRITE
from podi.auth import acting_user, principal_of, service_key_of
from podi.errors import AppError, validation_error
from podi.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from podi.pagination import MAX_PAGE_SIZE, paginate
from podi.schema import error_responses, page_of
from wallet.models import EntryType
from wallet.selectors import (
    AREA,
    account_for_user,
    account_statistics,
    hold_get_for_principal,
    ledger_entries,
)
from wallet.services import (
    MAX_POINTS,
    hold_confirm,
    hold_freeze,
    hold_release,
    wallet_grant,
)

MAX_TTL_SECONDS = 30 * 24 * 3600


def _privileged(request) -> bool:
    """Acts for anyone in the wallet: staff, or a service-account key with ``wallet:write``."""
    return principal_of(request).acts_for_anyone(AREA, WRITE)


def _bound(raw: str | None, field: str, *, end: bool) -> datetime | None:
    """``YYYY-MM-DD`` (a whole UTC day: from its start / to the end of it) or an ISO datetime."""
    if raw in (None, ""):
        return None
    try:
        day = parse_date(raw) if len(raw) == 10 else None
        moment = None if day is not None else parse_datetime(raw)
    except ValueError:
        day = moment = None
    if day is None and moment is None:
        raise validation_error({field: ["Use an ISO 8601 date or date-time."]})
    try:
        if day is not None:
            start = datetime.combine(day, time.min, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise validation_error({field: ["Out of the supported date range."]}) from None


def _range(query) -> tuple[datetime | None, datetime | None]:
    since = _bound(query.get("from"), "from", end=False)
    until = _bound(query.get("to"), "to", end=True)
    if since and until and until <= since:
        raise validation_error({"to": ["Must be after 'from'."]})
    return since, until


def _user_id_param(query) -> int | None:
    raw = query.get("userId")
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise validation_error({"userId": ["A valid integer is required."]}) from None
    if value < 1:
        raise validation_error({"userId": ["A valid integer is required."]})
    return value


USER_ID_PARAMETER = OpenApiParameter(
    "userId",
    OpenApiTypes.INT,
    description="Whose account (default: the caller's). Another user's needs staff or a "
    "wallet-scoped service key.",
)
RANGE_PARAMETERS = [
    OpenApiParameter(
        "from",
        OpenApiTypes.STR,
        description="Start, inclusive: ISO 8601 date-time, or a date (from its start, UTC).",
    ),
    OpenApiParameter(
        "to",
        OpenApiTypes.STR,
        description="End, exclusive: ISO 8601 date-time, or a date (to the end of that day, UTC).",
    ),
]


class WalletGrantApi(APIView):
    scope_area = "wallet"

    class InputSerializer(serializers.Serializer):
        userId = serializers.IntegerField(min_value=1)
        points = serializers.IntegerField(min_value=1, max_value=MAX_POINTS)
        reason = serializers.CharField(max_length=500, required=False, allow_blank=True)
        reference = serializers.CharField(
            max_length=128,
            required=False,
            allow_blank=True,
            help_text="Makes the grant idempotent: the same reference again returns the first.",
        )

    class OutputSerializer(serializers.Serializer):
        entryId = serializers.CharField()
        balance = serializers.IntegerField()

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404, 409, 429)},
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Grant points to a user (staff or wallet:write)",
    )
    @idempotent
    def post(self, request):
        if not _privileged(request):
            raise AppError(podi_codes.FORBIDDEN, "Only staff or a wallet:write key may grant.")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user = acting_user(request, values["userId"])
        with transaction.atomic():
            entry = wallet_grant(
                user=user,
                points=values["points"],
                reason=values.get("reason", ""),
                reference=values.get("reference", ""),
                staff_user=request.user if service_key_of(request) is None else None,
            )
        return Response(
            self.OutputSerializer(
                {"entryId": entry.public_id, "balance": entry.account.balance}
            ).data
        )


class HoldFreezeApi(APIView):
    scope_area = "wallet"

    class InputSerializer(serializers.Serializer):
        userId = serializers.IntegerField(min_value=1, required=False)
        taskId = serializers.CharField(max_length=64)
        points = serializers.IntegerField(min_value=1, max_value=MAX_POINTS)
        action = serializers.CharField(max_length=100, required=False, allow_blank=True)
        channel = serializers.CharField(max_length=64, required=False, allow_blank=True)
        ttlSeconds = serializers.IntegerField(
            min_value=1, max_value=MAX_TTL_SECONDS, required=False
        )

    class OutputSerializer(serializers.Serializer):
        holdId = serializers.CharField(source="public_id")
        balance = serializers.IntegerField(source="account.balance")
        frozen = serializers.IntegerField(source="account.frozen")
        expiresAt = serializers.DateTimeField(source="expires_at")

    @extend_schema(
        request=InputSerializer,
        responses={
            201: OutputSerializer,
            200: OutputSerializer,
            **error_responses(400, 401, 402, 403, 404, 409, 429),
        },
        parameters=[IDEMPOTENCY_PARAMETER],
        summary="Freeze points for a task (201 new hold; 200 the same hold again)",
    )
    @idempotent
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user = acting_user(request, values.get("userId"))
        # The service is its own transaction (on PostgreSQL one statement, event included).
        hold, created = hold_freeze(
            user=user,
            task_id=values["taskId"],
            points=values["points"],
            action=values.get("action", ""),
            channel=values.get("channel", ""),
            ttl_seconds=values.get("ttlSeconds"),
            owner_settles=not _privileged(request),
        )
        return Response(
            self.OutputSerializer(hold).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class HoldConfirmApi(APIView):
    scope_area = "wallet"

    class InputSerializer(serializers.Serializer):
        holdId = serializers.CharField(max_length=64)
        points = serializers.IntegerField(
            min_value=0,
            max_value=MAX_POINTS,
            required=False,
            allow_null=True,
            help_text="Charge only this much (≤ held) and release the rest. Default: all.",
        )

    class OutputSerializer(serializers.Serializer):
        holdId = serializers.CharField(source="public_id")
        status = serializers.CharField()
        deducted = serializers.IntegerField()
        released = serializers.IntegerField()
        balance = serializers.IntegerField(source="account.balance")
        frozen = serializers.IntegerField(source="account.frozen")

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404, 409, 429)},
        summary="Charge a hold, fully or in part (repeating is a no-op)",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        hold = hold_get_for_principal(principal_of(request), data.validated_data["holdId"])
        hold = hold_confirm(hold=hold, points=data.validated_data.get("points"))
        return Response(self.OutputSerializer(hold).data)


class HoldReleaseApi(APIView):
    scope_area = "wallet"

    class InputSerializer(serializers.Serializer):
        holdId = serializers.CharField(max_length=64)

    class OutputSerializer(serializers.Serializer):
        holdId = serializers.CharField(source="public_id")
        status = serializers.CharField(help_text="released (or expired, if expiry released it)")
        released = serializers.IntegerField()
        balance = serializers.IntegerField(source="account.balance")
        frozen = serializers.IntegerField(source="account.frozen")

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404, 409, 429)},
        summary="Give a hold's points back (idempotent)",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        hold = hold_get_for_principal(principal_of(request), data.validated_data["holdId"])
        hold = hold_release(hold=hold)
        return Response(self.OutputSerializer(hold).data)


class WalletBalanceApi(APIView):
    scope_area = "wallet"

    class OutputSerializer(serializers.Serializer):
        userId = serializers.IntegerField(source="user_id")
        balance = serializers.IntegerField()
        frozen = serializers.IntegerField()

    @extend_schema(
        parameters=[USER_ID_PARAMETER],
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404, 429)},
        summary="Balance and frozen points of an account",
    )
    def get(self, request):
        user = acting_user(request, _user_id_param(request.query_params))
        return Response(self.OutputSerializer(account_for_user(user)).data)


class WalletEntrySerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    type = serializers.ChoiceField(choices=EntryType.choices)
    points = serializers.IntegerField(
        help_text="Signed effect on balance + frozen: grant +, confirm −, adjust ±, else 0."
    )
    balanceAfter = serializers.IntegerField(source="balance_after")
    frozenAfter = serializers.IntegerField(source="frozen_after")
    holdId = serializers.CharField(source="hold.public_id", allow_null=True, default=None)
    taskId = serializers.CharField(source="task_id")
    action = serializers.CharField()
    channel = serializers.CharField()
    reason = serializers.CharField()
    createdAt = serializers.DateTimeField(source="created_at")


class WalletTransactionsApi(APIView):
    scope_area = "wallet"
    OutputSerializer = WalletEntrySerializer

    @extend_schema(
        parameters=[
            USER_ID_PARAMETER,
            OpenApiParameter("type", OpenApiTypes.STR, enum=EntryType.values),
            *RANGE_PARAMETERS,
            OpenApiParameter("page", OpenApiTypes.INT),
            OpenApiParameter("pageSize", OpenApiTypes.INT, description=f"At most {MAX_PAGE_SIZE}."),
        ],
        responses={
            200: page_of("WalletEntryPage", WalletEntrySerializer(many=True)),
            **error_responses(400, 401, 403, 404, 429),
        },
        summary="Ledger entries of an account, newest first (paginated)",
    )
    def get(self, request):
        query = request.query_params
        user = acting_user(request, _user_id_param(query))
        entry_type = query.get("type") or None
        if entry_type is not None and entry_type not in EntryType.values:
            raise validation_error({"type": [f"One of {', '.join(EntryType.values)}."]})
        since, until = _range(query)
        entries = ledger_entries(
            account=account_for_user(user), type=entry_type, since=since, until=until
        )
        return paginate(request, entries, self.OutputSerializer)


class WalletStatisticsByActionSerializer(serializers.Serializer):
    action = serializers.CharField()
    spent = serializers.IntegerField()
    count = serializers.IntegerField(help_text="Confirmed holds.")


class WalletStatisticsByDaySerializer(serializers.Serializer):
    date = serializers.DateField(help_text="UTC day.")
    spent = serializers.IntegerField()
    granted = serializers.IntegerField()


class WalletStatisticsApi(APIView):
    scope_area = "wallet"

    class OutputSerializer(serializers.Serializer):
        balance = serializers.IntegerField()
        frozen = serializers.IntegerField()
        totalGranted = serializers.IntegerField()
        totalSpent = serializers.IntegerField()
        totalReleased = serializers.IntegerField()
        totalAdjusted = serializers.IntegerField(help_text="Signed sum of staff adjustments.")
        byAction = WalletStatisticsByActionSerializer(many=True)
        byDay = WalletStatisticsByDaySerializer(many=True)

    @extend_schema(
        parameters=[USER_ID_PARAMETER, *RANGE_PARAMETERS],
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404, 429)},
        summary="Totals of an account's ledger over a period",
    )
    def get(self, request):
        user = acting_user(request, _user_id_param(request.query_params))
        since, until = _range(request.query_params)
        stats = account_statistics(account=account_for_user(user), since=since, until=until)
        return Response(self.OutputSerializer(stats).data)
