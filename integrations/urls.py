from django.urls import path

from integrations import apis

# Mounted at "api/abilities" (no trailing slash): patterns start with "" and "/".
ability_urlpatterns: list = [
    path("", apis.AbilitiesApi.as_view(), name="abilities"),
    path("/<int:ability_id>", apis.AbilityApi.as_view(), name="ability"),
]

# Mounted at "api/admin/".
admin_urlpatterns: list = [
    path("executors", apis.AdminExecutorsApi.as_view(), name="admin-executors"),
    path("executors/<int:executor_id>", apis.AdminExecutorApi.as_view(), name="admin-executor"),
    path(
        "executors/<int:executor_id>/check",
        apis.AdminExecutorCheckApi.as_view(),
        name="admin-executor-check",
    ),
    path("workflows", apis.AdminWorkflowsApi.as_view(), name="admin-workflows"),
    path("workflows/<int:workflow_id>", apis.AdminWorkflowApi.as_view(), name="admin-workflow"),
    path(
        "workflows/<int:workflow_id>/versions",
        apis.AdminWorkflowVersionsApi.as_view(),
        name="admin-workflow-versions",
    ),
    path("abilities", apis.AdminAbilitiesApi.as_view(), name="admin-abilities"),
    path("abilities/<int:ability_id>", apis.AdminAbilityApi.as_view(), name="admin-ability"),
    path("workflow-bindings", apis.AdminBindingsApi.as_view(), name="admin-bindings"),
    path(
        "workflow-bindings/<int:binding_id>",
        apis.AdminBindingApi.as_view(),
        name="admin-binding",
    ),
    path("api-keys", apis.AdminApiKeysApi.as_view(), name="admin-api-keys"),
    path("api-keys/<int:key_id>", apis.AdminApiKeyApi.as_view(), name="admin-api-key"),
    path("presets", apis.AdminPresetsApi.as_view(), name="admin-presets"),
    path("presets/<int:preset_id>", apis.AdminPresetApi.as_view(), name="admin-preset"),
]
