"""Routes of the agent protocol and of the agents' admin API; ``podi.urls`` mounts them."""

from django.urls import path

from integrations.agents import apis

# Under "api/admin/".
admin_urlpatterns: list = [
    path("agents", apis.AdminAgentsApi.as_view(), name="admin-agents"),
    path("agents/<int:agent_id>", apis.AdminAgentApi.as_view(), name="admin-agent"),
    path(
        "agents/<int:agent_id>/token", apis.AdminAgentTokenApi.as_view(), name="admin-agent-token"
    ),
    path(
        "agents/<int:agent_id>/revoke-tokens",
        apis.AdminAgentRevokeTokensApi.as_view(),
        name="admin-agent-revoke-tokens",
    ),
    path(
        "agents/<int:agent_id>/tasks", apis.AdminAgentTasksApi.as_view(), name="admin-agent-tasks"
    ),
    path(
        "agents/<int:agent_id>/tasks/<str:task_id>",
        apis.AdminAgentTaskApi.as_view(),
        name="admin-agent-task",
    ),
    path(
        "agents/<int:agent_id>/alerts",
        apis.AdminAgentAlertsApi.as_view(),
        name="admin-agent-alerts",
    ),
    path("manifests", apis.AdminManifestsApi.as_view(), name="admin-manifests"),
    path("manifests/<int:manifest_id>", apis.AdminManifestApi.as_view(), name="admin-manifest"),
    path(
        "manifests/<int:manifest_id>/versions",
        apis.AdminManifestVersionsApi.as_view(),
        name="admin-manifest-versions",
    ),
]

# Under "api/agent/v1/".
agent_urlpatterns: list = [
    path(
        "agents/<int:agent_id>/heartbeat", apis.AgentHeartbeatApi.as_view(), name="agent-heartbeat"
    ),
    path("agents/<int:agent_id>/alerts", apis.AgentAlertsApi.as_view(), name="agent-alerts"),
    path("manifests/<int:manifest_id>", apis.AgentManifestApi.as_view(), name="agent-manifest"),
    path("tasks/<str:task_id>/events", apis.AgentTaskEventsApi.as_view(), name="agent-task-events"),
    path(
        "tasks/<str:task_id>/complete",
        apis.AgentTaskCompleteApi.as_view(),
        name="agent-task-complete",
    ),
    path("tasks/<str:task_id>/failed", apis.AgentTaskFailedApi.as_view(), name="agent-task-failed"),
]
