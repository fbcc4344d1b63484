"""ASGI entry point: HTTP through Django, WebSocket through Channels.

``daphne podi.asgi:application`` serves it in production; ``manage.py up`` serves it embedded.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "podi.settings")

import django  # noqa: E402

django.setup(set_prefix=False)

from podi.asgi_handler import OneHopASGIHandler  # noqa: E402

# Django's ASGI handler, with the middleware chain and the view in one thread hop per request.
django_application = OneHopASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from podi.realtime.routing import websocket_urlpatterns  # noqa: E402

http_application = (
    ASGIStaticFilesHandler(django_application) if settings.SERVE_STATIC else django_application
)

application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)

from podi.runtime import freeze_startup_heap  # noqa: E402

freeze_startup_heap()
