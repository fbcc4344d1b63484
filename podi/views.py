"""JSON error pages for ``/api/`` paths that no view handled; HTML elsewhere (admin)."""

from django.views import defaults

from podi import error_codes as codes
from podi.errors import json_error
from podi.logging import current_request_id


def _is_api(request) -> bool:
    return request.path.startswith("/api/") or request.path == "/health"


def not_found(request, exception=None):
    if _is_api(request):
        return json_error(codes.NOT_FOUND, details={"path": request.path})
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _is_api(request):
        return json_error(codes.INTERNAL_ERROR, details={"requestId": current_request_id()})
    return defaults.server_error(request)
