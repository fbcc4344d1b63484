"""Small pieces every app's admin API shares: the staff-only base view, query-string flags and
integers that answer 400 when malformed, and camelCase → keyword renaming."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from podi.auth import IsStaffPrincipal
from podi.errors import validation_error


class AdminApi(APIView):
    """``/api/admin/…``: staff users and ``admin``-scope service keys only."""

    permission_classes = [IsAuthenticated, IsStaffPrincipal]


def rename_keys(data: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """camelCase input → service keyword names (keys not in ``mapping`` stay as they are)."""
    return {mapping.get(key, key): value for key, value in data.items()}


def query_flag(request, name: str) -> bool | None:
    """``?name=true|false`` (also 1/0, yes/no); None when absent; 400 otherwise."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise validation_error({name: ["Use true or false."]})


def query_int(request, name: str) -> int | None:
    """``?name=<integer>``; None when absent; 400 otherwise."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise validation_error({name: ["Must be an integer."]}) from None
    if not -(2**63) <= value < 2**63:  # beyond any integer column: a 400, not a database error
        raise validation_error({name: ["Out of range."]})
    return value
