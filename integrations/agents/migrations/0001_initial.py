"""The agents' models, taken over from ``integrations`` (its 0002_agents made the tables).

State only for the tables: they keep their names (``Meta.db_table``), so a database at the
previous schema upgrades in place with every row kept. The content types (and so permissions
and admin history) move from ``integrations.<model>`` to ``agents.<model>``.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

MODELS = ("agent", "manifest", "manifestversion", "agenttask", "agenttaskevent", "alert")


def _move_content_types(apps, from_label: str, to_label: str) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    taken = set(
        content_type.objects.filter(app_label=to_label, model__in=MODELS).values_list(
            "model", flat=True
        )
    )
    content_type.objects.filter(app_label=from_label, model__in=MODELS).exclude(
        model__in=taken
    ).update(app_label=to_label)


def content_types_forward(apps, schema_editor) -> None:
    _move_content_types(apps, "integrations", "agents")


def content_types_backward(apps, schema_editor) -> None:
    _move_content_types(apps, "agents", "integrations")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("integrations", "0002_agents"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Manifest",
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
                        ("name", models.CharField(max_length=100, unique=True)),
                        ("description", models.TextField(blank=True)),
                        (
                            "created_at",
                            models.DateTimeField(default=django.utils.timezone.now, editable=False),
                        ),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        "db_table": "integrations_manifest",
                        "ordering": ["name"],
                    },
                ),
                migrations.CreateModel(
                    name="Agent",
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
                        ("name", models.CharField(max_length=100, unique=True)),
                        (
                            "base_url",
                            models.CharField(
                                help_text="http(s)://host:port of the agent; PODI pushes to {baseUrl}/tasks.",
                                max_length=500,
                            ),
                        ),
                        ("enabled", models.BooleanField(default=True)),
                        ("description", models.TextField(blank=True)),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("unknown", "never seen"),
                                    ("online", "online"),
                                    ("offline", "offline"),
                                ],
                                default="unknown",
                                max_length=10,
                            ),
                        ),
                        (
                            "status_changed_at",
                            models.DateTimeField(blank=True, editable=False, null=True),
                        ),
                        (
                            "last_heartbeat_at",
                            models.DateTimeField(blank=True, editable=False, null=True),
                        ),
                        (
                            "reported_status",
                            models.CharField(blank=True, editable=False, max_length=32),
                        ),
                        (
                            "agent_version",
                            models.CharField(blank=True, editable=False, max_length=64),
                        ),
                        (
                            "comfyui_version",
                            models.CharField(blank=True, editable=False, max_length=64),
                        ),
                        ("metrics", models.JSONField(blank=True, default=dict, editable=False)),
                        ("token_version", models.PositiveIntegerField(default=1, editable=False)),
                        ("token_kid", models.CharField(blank=True, editable=False, max_length=64)),
                        ("token_jti", models.CharField(blank=True, editable=False, max_length=64)),
                        (
                            "token_issued_at",
                            models.DateTimeField(blank=True, editable=False, null=True),
                        ),
                        (
                            "token_expires_at",
                            models.DateTimeField(blank=True, editable=False, null=True),
                        ),
                        (
                            "tokens_revoked_at",
                            models.DateTimeField(blank=True, editable=False, null=True),
                        ),
                        (
                            "created_at",
                            models.DateTimeField(default=django.utils.timezone.now, editable=False),
                        ),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "executor",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="agents",
                                to="integrations.executor",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "integrations_agent",
                        "ordering": ["name"],
                    },
                ),
                migrations.CreateModel(
                    name="AgentTask",
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
                        ("public_id", models.CharField(editable=False, max_length=40, unique=True)),
                        ("actions", models.JSONField(default=list)),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "pending"),
                                    ("running", "running"),
                                    ("succeeded", "succeeded"),
                                    ("failed", "failed"),
                                    ("expired", "expired"),
                                ],
                                default="pending",
                                max_length=10,
                            ),
                        ),
                        ("progress", models.PositiveSmallIntegerField(default=0)),
                        ("expires_at", models.DateTimeField()),
                        ("next_push_at", models.DateTimeField(blank=True, null=True)),
                        ("push_claimed_at", models.DateTimeField(blank=True, null=True)),
                        ("push_attempts", models.PositiveIntegerField(default=0)),
                        ("push_failures", models.PositiveIntegerField(default=0)),
                        ("last_push_at", models.DateTimeField(blank=True, null=True)),
                        ("last_push_error", models.TextField(blank=True)),
                        ("accepted_at", models.DateTimeField(blank=True, null=True)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("result", models.JSONField(blank=True, null=True)),
                        ("error_code", models.CharField(blank=True, max_length=64)),
                        ("error_message", models.TextField(blank=True)),
                        (
                            "created_at",
                            models.DateTimeField(default=django.utils.timezone.now, editable=False),
                        ),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "agent",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="tasks",
                                to="agents.agent",
                            ),
                        ),
                        (
                            "created_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "integrations_agenttask",
                        "ordering": ["-created_at", "-pk"],
                    },
                ),
                migrations.CreateModel(
                    name="AgentTaskEvent",
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
                        (
                            "source",
                            models.CharField(
                                choices=[("podi", "PODI"), ("agent", "agent")], max_length=10
                            ),
                        ),
                        ("type", models.CharField(max_length=32)),
                        ("message", models.TextField(blank=True)),
                        ("progress", models.PositiveSmallIntegerField(blank=True, null=True)),
                        ("payload", models.JSONField(blank=True, default=dict)),
                        (
                            "created_at",
                            models.DateTimeField(default=django.utils.timezone.now, editable=False),
                        ),
                        (
                            "task",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="events",
                                to="agents.agenttask",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "integrations_agenttaskevent",
                        "ordering": ["task", "created_at", "pk"],
                    },
                ),
                migrations.CreateModel(
                    name="ManifestVersion",
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
                        ("version", models.PositiveIntegerField()),
                        ("content", models.JSONField()),
                        ("changelog", models.TextField(blank=True)),
                        (
                            "created_at",
                            models.DateTimeField(default=django.utils.timezone.now, editable=False),
                        ),
                        (
                            "created_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "manifest",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="versions",
                                to="agents.manifest",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "integrations_manifestversion",
                        "ordering": ["manifest", "-version"],
                    },
                ),
                migrations.AddField(
                    model_name="manifest",
                    name="latest_version",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="agents.manifestversion",
                    ),
                ),
                migrations.AddField(
                    model_name="agenttask",
                    name="manifest_version",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="tasks",
                        to="agents.manifestversion",
                    ),
                ),
                migrations.AddField(
                    model_name="agent",
                    name="manifest_version",
                    field=models.ForeignKey(
                        blank=True,
                        editable=False,
                        help_text="The manifest version of the agent's last successful sync.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="agents.manifestversion",
                    ),
                ),
                migrations.CreateModel(
                    name="Alert",
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
                        ("public_id", models.CharField(editable=False, max_length=40, unique=True)),
                        (
                            "source",
                            models.CharField(
                                choices=[("podi", "PODI"), ("agent", "agent")], max_length=10
                            ),
                        ),
                        ("type", models.CharField(max_length=64)),
                        (
                            "severity",
                            models.CharField(
                                choices=[
                                    ("info", "info"),
                                    ("warning", "warning"),
                                    ("critical", "critical"),
                                ],
                                default="warning",
                                max_length=10,
                            ),
                        ),
                        ("message", models.TextField(blank=True)),
                        ("payload", models.JSONField(blank=True, default=dict)),
                        ("acknowledged_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "created_at",
                            models.DateTimeField(default=django.utils.timezone.now, editable=False),
                        ),
                        (
                            "acknowledged_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "agent",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="alerts",
                                to="agents.agent",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "integrations_alert",
                        "ordering": ["-created_at", "-pk"],
                        "indexes": [
                            models.Index(fields=["agent", "-created_at"], name="alert_agent_idx")
                        ],
                    },
                ),
                migrations.AddConstraint(
                    model_name="manifestversion",
                    constraint=models.UniqueConstraint(
                        fields=("manifest", "version"), name="manifest_version_unique"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="manifestversion",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("version__gte", 1)), name="manifest_version_gte_1"
                    ),
                ),
                migrations.AddIndex(
                    model_name="agenttask",
                    index=models.Index(
                        fields=["status", "next_push_at"], name="agenttask_push_idx"
                    ),
                ),
                migrations.AddIndex(
                    model_name="agenttask",
                    index=models.Index(
                        fields=["status", "expires_at"], name="agenttask_expiry_idx"
                    ),
                ),
                migrations.AddIndex(
                    model_name="agenttask",
                    index=models.Index(fields=["agent", "-created_at"], name="agenttask_agent_idx"),
                ),
                migrations.AddConstraint(
                    model_name="agenttask",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("progress__lte", 100)),
                        name="agenttask_progress_lte_100",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="agent",
                    constraint=models.UniqueConstraint(
                        fields=("executor",), name="agent_one_per_executor"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="agent",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("token_version__gte", 1)), name="agent_token_ver_gte_1"
                    ),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_forward, content_types_backward),
    ]
