"""Request id: taken from ``X-Request-ID`` when it looks sane, else generated; echoed on every response."""

from __future__ import annotations

import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from podi.error_codes import VALIDATION_ERROR
from podi.errors import json_error
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


class RejectNulMiddleware:
    """400 ``VALIDATION_ERROR`` for a NUL character in the query string.

    PostgreSQL cannot store or compare text holding NUL, so such a value would otherwise fail
    deep inside a query. JSON bodies are checked by ``podi.parsers.JSONParser``; a NUL in the
    path reaches the view, which may refuse it with its own code, and otherwise the exception
    handler turns the database's refusal into a 400.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    @staticmethod
    def _refusal(request):

        for key, values in request.GET.lists():
            if "\x00" in key or any("\x00" in value for value in values):
                return json_error(
                    VALIDATION_ERROR,
                    f"{key.replace(chr(0), '')}: NUL characters are not allowed.",
                    {"fields": {key.replace("\x00", ""): ["NUL characters are not allowed."]}},
                )
        return None

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        return self._refusal(request) or self.get_response(request)

    async def _acall(self, request):
        return self._refusal(request) or await self.get_response(request)
