"""JSON error pages for ``/api/`` paths that no view handled; HTML elsewhere (admin)."""

import sys

from django.views import defaults

from podi import error_codes as codes
from podi.errors import json_error, to_app_error
from podi.logging import current_request_id


def _is_api(request) -> bool:
    return request.path.startswith("/api/") or request.path == "/health"


def not_found(request, exception=None):
    if _is_api(request):
        return json_error(codes.NOT_FOUND, details={"path": request.path})
    return defaults.page_not_found(request, exception)


def server_error(request):
    # Django calls this while handling the exception, so sys.exc_info() is that exception: a
    # database or Redis outage (or overload) outside a DRF view — middleware, the admin, a plain
    # view — answers 503 with its code, as inside the API (podi.errors.to_app_error).
    error = to_app_error(sys.exc_info()[1]) if sys.exc_info()[1] is not None else None
    if error is not None and error.status == 503:
        response = json_error(error.error, error.message, error.details)
        for key, value in error.headers.items():
            response[key] = value
        return response
    if _is_api(request):
        return json_error(codes.INTERNAL_ERROR, details={"requestId": current_request_id()})
    return defaults.server_error(request)
