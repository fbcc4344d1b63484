from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

import integrations.agents.urls
import integrations.urls
import media_app.urls
import podi.realtime.urls
import tasks.urls
import wallet.urls
from podi import apis, views
from podi.console import views as console_views
from tasks.apis import TaskListApi

auth_urlpatterns = [
    path("login", apis.LoginApi.as_view(), name="auth-login"),
    path("refresh", apis.RefreshApi.as_view(), name="auth-refresh"),
    path("logout", apis.LogoutApi.as_view(), name="auth-logout"),
    path("me", apis.MeApi.as_view(), name="auth-me"),
    path("register", apis.RegisterApi.as_view(), name="auth-register"),
]

urlpatterns = [
    path("health", apis.HealthApi.as_view(), name="health"),
    path("metrics", console_views.metrics, name="metrics"),
    path("favicon.ico", console_views.favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("api/auth/v1/", include(auth_urlpatterns)),
    path("api/wallet/v1/", include(wallet.urls.urlpatterns)),
    path("api/tasks/v1", TaskListApi.as_view(), name="task-list"),
    path("api/tasks/v1/", include(tasks.urls.urlpatterns)),
    path("api/notify/v1/", include(podi.realtime.urls.urlpatterns)),
    path(
        "api/abilities",
        include(integrations.urls.ability_urlpatterns + tasks.urls.ability_invoke_urlpatterns),
    ),
    path(
        "api/admin/",
        include(integrations.urls.admin_urlpatterns + integrations.agents.urls.admin_urlpatterns),
    ),
    path("api/agent/v1/", include(integrations.agents.urls.agent_urlpatterns)),
    path("api/media/v1/", include(media_app.urls.urlpatterns)),
    *media_app.urls.root_urlpatterns,
]

handler404 = views.not_found
handler500 = views.server_error
