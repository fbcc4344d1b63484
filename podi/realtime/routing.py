"""WebSocket routes (served by ``podi.asgi``)."""

from django.urls import path

from podi.realtime.consumers import NotifyConsumer

websocket_urlpatterns = [
    path("api/notify/v1/stream", NotifyConsumer.as_asgi(), name="notify-stream"),
]
