"""WebSocket routes (served by ``podi.asgi``)."""

websocket_urlpatterns: list = []
