from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "integrations.agents"
    label = "agents"
    verbose_name = "GPU-server agents"
    default_auto_field = "django.db.models.BigAutoField"
