"""``/api/notify/v1/`` (the stream's WebSocket route is in ``routing``)."""

from django.urls import path

from podi.realtime import apis

urlpatterns = [
    path("event", apis.NotifyEventApi.as_view(), name="notify-event"),
]
