from django.apps import AppConfig


class PodiConfig(AppConfig):
    name = "podi"
    verbose_name = "Platform"
    default_auto_field = "django.db.models.BigAutoField"
