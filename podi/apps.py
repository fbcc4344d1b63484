from django.apps import AppConfig
from django.conf import settings


class PodiConfig(AppConfig):
    name = "podi"
    verbose_name = "Platform"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if settings.DATABASE_PREPARED_STATEMENTS:  # PostgreSQL connections only
            from podi import prepared

            prepared.install()
        if settings.SQL_COUNT_DIR:  # benches only: count SQL statements (podi/sqlcount.py)
            from podi import sqlcount

            sqlcount.install(settings.SQL_COUNT_DIR)
