from django.urls import path

from tasks import apis

urlpatterns = [
    path("submit", apis.TaskSubmitApi.as_view(), name="task-submit"),
    path("batches", apis.BatchSubmitApi.as_view(), name="batch-submit"),
    path("batches/<str:batch_id>", apis.BatchDetailApi.as_view(), name="batch-detail"),
    path("templates", apis.TemplateListApi.as_view(), name="template-list"),
    path(
        "templates/<str:template_id>/create-task",
        apis.TemplateCreateTaskApi.as_view(),
        name="template-create-task",
    ),
    path("<str:task_id>", apis.TaskDetailApi.as_view(), name="task-detail"),
    path("<str:task_id>/cancel", apis.TaskCancelApi.as_view(), name="task-cancel"),
    path("<str:task_id>/retry", apis.TaskRetryApi.as_view(), name="task-retry"),
    path("<str:task_id>/events", apis.TaskEventsApi.as_view(), name="task-events"),
    path("<str:task_id>/complete", apis.TaskCompleteApi.as_view(), name="task-complete"),
]

# Mounted by integrations.urls under /api/abilities.
ability_invoke_urlpatterns = [
    path("/<int:ability_id>/invoke", apis.AbilityInvokeApi.as_view(), name="ability-invoke"),
]

__all__ = ["ability_invoke_urlpatterns", "urlpatterns"]
