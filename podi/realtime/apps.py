from django.apps import AppConfig
from django.conf import settings


class RealtimeConfig(AppConfig):
    """Live events sit next to ``podi``: they import no app above them (docs/adr/0006)."""

    name = "podi.realtime"
    label = "realtime"
    verbose_name = "Live events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django requires these at app-loading time: they import models.
        from podi.realtime import actors  # noqa: F401  (declares the delivery actor)
        from podi.realtime.events import register_sink, set_recorder
        from podi.realtime.publisher import channel_layer_sink
        from podi.realtime.services import (
            event_record,
            event_record_in_statement,
            events_record,
            events_record_in_statement,
        )
        from podi.realtime.webhooks import check_signing_secret

        if settings.WEBHOOK_SECRET:
            check_signing_secret(settings.WEBHOOK_SECRET)  # fail at start, not at send
        set_recorder(
            event_record,
            several=events_record,
            in_statement=event_record_in_statement,
            several_in_statement=events_record_in_statement,
        )
        register_sink(channel_layer_sink)
