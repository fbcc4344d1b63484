from tasks.apis_notify import notify_urlpatterns

urlpatterns: list = []

__all__ = ["notify_urlpatterns", "urlpatterns"]
