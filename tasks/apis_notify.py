"""Notification routes (``/api/notify/v1/``)."""

notify_urlpatterns: list = []
