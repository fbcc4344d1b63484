urlpatterns: list = []
notify_urlpatterns: list = []
