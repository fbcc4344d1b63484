"""Django over ASGI with one thread hop per request (docs/adr/0020-one-hop-http.md, 0027).

Django's own ``ASGIHandler`` builds an async middleware chain. Every middleware that is not
async-native (Django's ``MiddlewareMixin`` ones: security, CORS, sessions, common, CSRF, auth,
messages, clickjacking) then runs its ``process_request`` and ``process_response`` through
``sync_to_async``, as does the (sync) view: a dozen hops to a worker thread and back per
request, each a future, a self-pipe write and a loop wake-up. It also starts a thread per
request (asgiref's ``ThreadSensitiveContext``) and sends the request signals and closes the
response in hops of their own.

This handler loads the chain the way a WSGI server does (sync) and runs everything synchronous
of a request in one hop to a long-lived thread of its own pool: ``request_started``, building
the request, the middleware chain and the view, and (for a response that is not streamed) its
``close()``, which sends ``request_finished`` and hands the database connection back. Reading the
body and sending the response stay on the loop; a streamed answer (a local file download) is
read a chunk at a time on the pool, never whole into memory. PODI has no async views.
``__call__`` replaces Django's ``handle``, whose async path this sync chain would not serve.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.http import FileResponse
from django.urls import set_script_prefix


class OneHopASGIHandler(ASGIHandler):
    def __init__(self, threads: int | None = None):
        super().__init__()
        self.pool = ThreadPoolExecutor(
            max_workers=threads or settings.WEB_THREADS, thread_name_prefix="podi-web"
        )

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            response = await sync_to_async(
                self._respond, thread_sensitive=False, executor=self.pool
            )(scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                if response.streaming:
                    await sync_to_async(
                        response.close, thread_sensitive=False, executor=self.pool
                    )()
        finally:
            body_file.close()

    def _respond(self, scope, body_file):
        """Everything synchronous of one request, on one thread of the pool."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            response.close()  # request_finished: the connection goes back before the bytes go out
        else:
            # Its close() comes after the last chunk, maybe on another of the pool's threads:
            # hand this thread's database connection back now, as request_finished would.
            close_old_connections()
            if not response.is_async:
                # Django would read a synchronous stream whole into memory to send it over
                # ASGI; read it a chunk at a time on the pool instead.
                response.streaming_content = self._chunks(response.streaming_content)
        return response

    async def _chunks(self, iterator):
        step = sync_to_async(next, thread_sensitive=False, executor=self.pool)
        done = object()
        while (part := await step(iterator, done)) is not done:
            yield part
