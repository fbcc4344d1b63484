"""Django over ASGI with one thread hop per request (docs/adr/0020-one-hop-http.md).

Django's own ``ASGIHandler`` builds an async middleware chain. Every middleware that is not
async-native (Django's ``MiddlewareMixin`` ones: security, CORS, sessions, common, CSRF, auth,
messages, clickjacking) then runs its ``process_request`` and ``process_response`` through
``sync_to_async``, as does the (sync) view: a dozen hops to a worker thread and back per
request, each a future, a self-pipe write and a loop wake-up. This handler loads the chain the
way a WSGI server does (sync) and runs it, view included, in one ``sync_to_async`` call. The
rest is Django's: reading the body, the request signals, the disconnect watch, streaming the
response. PODI has no async views.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class OneHopASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request):
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
