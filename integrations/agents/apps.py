from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "integrations.agents"
    label = "agents"
    verbose_name = "GPU-server agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django requires this at app-loading time: it imports models. The rest of integrations
        # sits below agents and may not import them; it calls the gate through this hook.
        from integrations.agents.services.liveness import executor_agent_gate
        from integrations.services import register_health_gate

        register_health_gate(executor_agent_gate)
