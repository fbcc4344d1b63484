"""Request id: taken from ``X-Request-ID`` when it looks sane, else generated; echoed on every response."""

from __future__ import annotations

import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from podi.logging import reset_request_id, set_request_id

_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(request) -> str:
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if _SANE.match(incoming) else uuid.uuid4().hex


class RequestIdMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        request_id = _request_id(request)
        request.request_id = request_id
        token = set_request_id(request_id)
        try:
            response = self.get_response(request)
        finally:
            reset_request_id(token)
        response["X-Request-ID"] = request_id
        return response

    async def _acall(self, request):
        request_id = _request_id(request)
        request.request_id = request_id
        token = set_request_id(request_id)
        try:
            response = await self.get_response(request)
        finally:
            reset_request_id(token)
        response["X-Request-ID"] = request_id
        return response
