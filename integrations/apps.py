from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Integrations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # App loading: the catalog models exist only now.
        from django.db.models.signals import post_delete, post_save

        from integrations import models
        from integrations.selectors import catalog_changed

        for model in (
            models.Ability,
            models.Preset,
            models.Workflow,
            models.WorkflowVersion,
            models.WorkflowBinding,
            models.Executor,
        ):
            post_save.connect(
                catalog_changed, sender=model, dispatch_uid=f"catalog-{model.__name__}"
            )
            post_delete.connect(
                catalog_changed, sender=model, dispatch_uid=f"catalog-del-{model.__name__}"
            )
