"""ASGI entry point: HTTP through Django, WebSocket through Channels.

``daphne podi.asgi:application`` serves it in production; ``manage.py up`` serves it embedded.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "podi.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

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
