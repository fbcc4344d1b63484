"""Live events' models, taken over in place from ``tasks`` (docs/adr/0006-live-events.md), step 3
of 3: the state is created over the existing tables (no row is copied), then the tables are
renamed to this app's names. Content types follow, so permissions and admin history stay."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

MOVED = {"eventcursor": "eventcursor", "taskevent": "event"} | {
    name: name for name in ("webhookdelivery", "webhookattempt")
}


def move_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for old, new in MOVED.items():
        if not ContentType.objects.filter(app_label="realtime", model=new).exists():
            ContentType.objects.filter(app_label="tasks", model=old).update(
                app_label="realtime", model=new
            )


def restore_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for old, new in MOVED.items():
        ContentType.objects.filter(app_label="realtime", model=new).update(
            app_label="tasks", model=old
        )


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("podi", "0002_servicekey_webhook_secret"),
        ("tasks", "0003_live_events_to_realtime"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="EventCursor",
                    fields=[
                        (
                            "user",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="+",
                                serialize=False,
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        ("last_seq", models.BigIntegerField(default=0)),
                    ],
                    options={"db_table": "tasks_eventcursor"},
                ),
                migrations.CreateModel(
                    name="Event",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("public_id", models.CharField(max_length=32, unique=True)),
                        ("seq", models.BigIntegerField()),
                        (
                            "task_public_id",
                            models.CharField(
                                blank=True,
                                default="",
                                help_text="The task the event is about, if any.",
                                max_length=64,
                            ),
                        ),
                        ("type", models.CharField(max_length=64)),
                        ("payload", models.JSONField(default=dict)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["user", "seq"],
                        "db_table": "tasks_taskevent",
                        "constraints": [
                            models.UniqueConstraint(fields=("user", "seq"), name="event_user_seq")
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="WebhookDelivery",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("public_id", models.CharField(max_length=32, unique=True)),
                        (
                            "task_public_id",
                            models.CharField(
                                blank=True,
                                default="",
                                help_text="The task the callback is about, if any.",
                                max_length=64,
                            ),
                        ),
                        ("event_type", models.CharField(max_length=64)),
                        ("url", models.URLField(max_length=2000)),
                        ("payload", models.JSONField(default=dict)),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "Pending"),
                                    ("succeeded", "Succeeded"),
                                    ("failed", "Failed"),
                                    ("exhausted", "Exhausted"),
                                    ("stopped", "Stopped"),
                                ],
                                default="pending",
                                max_length=16,
                            ),
                        ),
                        ("attempts", models.PositiveSmallIntegerField(default=0)),
                        ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "last_status_code",
                            models.PositiveSmallIntegerField(blank=True, null=True),
                        ),
                        ("last_error", models.TextField(blank=True)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("delivered_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "service_key",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to="podi.servicekey",
                            ),
                        ),
                        (
                            "user",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "verbose_name_plural": "webhook deliveries",
                        "ordering": ["-created_at"],
                        "db_table": "tasks_webhookdelivery",
                        "indexes": [
                            models.Index(
                                fields=["status", "next_attempt_at"], name="webhook_due_idx"
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="WebhookAttempt",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("number", models.PositiveSmallIntegerField()),
                        ("started_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("status_code", models.PositiveSmallIntegerField(blank=True, null=True)),
                        ("latency_ms", models.PositiveIntegerField(blank=True, null=True)),
                        ("error", models.TextField(blank=True)),
                        ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "delivery",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="attempt_log",
                                to="realtime.webhookdelivery",
                            ),
                        ),
                    ],
                    options={
                        "ordering": ["delivery", "number"],
                        "db_table": "tasks_webhookattempt",
                    },
                ),
            ],
        ),
        migrations.AlterModelTable(name="eventcursor", table=None),
        migrations.AlterModelTable(name="event", table=None),
        migrations.AlterModelTable(name="webhookdelivery", table=None),
        migrations.AlterModelTable(name="webhookattempt", table=None),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(fields=["task_public_id", "seq"], name="event_task_idx"),
        ),
        migrations.RunPython(move_content_types, restore_content_types),
    ]
