ability_urlpatterns: list = []
admin_urlpatterns: list = []
agent_urlpatterns: list = []
