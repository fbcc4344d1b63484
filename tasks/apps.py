from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from podi.events import set_recorder
        from tasks.realtime import register_sinks
        from tasks.services import event_record

        set_recorder(event_record)
        register_sinks()
