urlpatterns: list = []
root_urlpatterns: list = []
