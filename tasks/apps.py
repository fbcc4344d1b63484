from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Lend the apps below what they must not import (docs/adr/0006-live-events.md,
        # docs/architecture.md §5): who owns a task (a wallet hold may name only its user's own
        # task), who may follow one, and how output URLs are signed when a callback or the
        # stream sends them.
        from podi.access import register_owner_lookup
        from podi.realtime.events import (
            register_followable,
            register_stream_payload_hook,
            register_webhook_body_hook,
        )
        from tasks import actors  # noqa: F401  (declares the actors services ring by name)
        from tasks.selectors import (
            task_owner_ids,
            task_owner_sql,
            tasks_followable,
            tasks_live_holds,
        )
        from tasks.services import callback_body_for_sending, stream_payload_for_sending
        from wallet.services import register_live_hold_check

        register_owner_lookup("task", task_owner_ids, owner_sql=task_owner_sql())
        register_followable("task", tasks_followable)
        register_webhook_body_hook(callback_body_for_sending)
        register_stream_payload_hook(stream_payload_for_sending)
        # A live task's hold never expires under it; the task settles it (docs/adr/0011).
        register_live_hold_check(tasks_live_holds)
