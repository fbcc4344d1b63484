"""Schema helpers: the error envelope as a documented response shape."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as _AutoSchema
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable UPPER_SNAKE error code.")
    message = serializers.CharField()
    details = serializers.DictField(help_text="For VALIDATION_ERROR: {fields: {name: [messages]}}.")


_DESCRIPTIONS = {
    400: "VALIDATION_ERROR or another client error",
    401: "AUTH_REQUIRED / AUTH_INVALID",
    402: "Not enough points",
    403: "FORBIDDEN",
    404: "Not found",
    405: "METHOD_NOT_ALLOWED",
    409: "Conflict",
    413: "Too large",
    429: "RATE_LIMITED",
    503: "Unavailable",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    return {
        status: OpenApiResponse(response=ErrorSerializer, description=_DESCRIPTIONS.get(status, ""))
        for status in statuses
    }


class AutoSchema(_AutoSchema):
    """Names nested serializers after their view: ``LoginApi.InputSerializer`` → ``LoginInput``."""

    def get_serializer_name(self, serializer, direction):
        cls = serializer if isinstance(serializer, type) else type(serializer)
        parts = cls.__qualname__.split(".")
        if len(parts) >= 2 and "<locals>" not in parts:
            outer = parts[-2].removesuffix("Api").removesuffix("View")
            inner = parts[-1].removesuffix("Serializer")
            return f"{outer}{inner}"
        return super().get_serializer_name(serializer, direction)


class BearerAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "podi.auth.BearerAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A user access JWT from /api/auth/v1/login, or a service key psk_….",
        }


def page_of(name: str, item_serializer) -> serializers.Serializer:
    """The documented shape of a paginated list: ``{items, total, page, pageSize, totalPages}``."""

    return inline_serializer(
        name,
        {
            "items": item_serializer,
            "total": serializers.IntegerField(),
            "page": serializers.IntegerField(),
            "pageSize": serializers.IntegerField(),
            "totalPages": serializers.IntegerField(),
        },
    )
