"""Live events move to ``podi.realtime`` (docs/adr/0006-live-events.md), step 1 of 3: events and
webhook deliveries name their task by public id, as on the wire, instead of a foreign key, so
the new app points at no row of this one. The public ids are copied from the tasks."""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery

MOVED_WITH_TASK_FK = ["TaskEvent", "WebhookDelivery"]


def copy_public_ids(apps, schema_editor):
    Task = apps.get_model("tasks", "Task")
    public_id = Subquery(Task.objects.filter(pk=OuterRef("task_id")).values("public_id")[:1])
    for name in MOVED_WITH_TASK_FK:
        model = apps.get_model("tasks", name)
        model.objects.filter(task__isnull=False).update(task_public_id=public_id)


def copy_task_keys(apps, schema_editor):
    Task = apps.get_model("tasks", "Task")
    pk = Subquery(Task.objects.filter(public_id=OuterRef("task_public_id")).values("pk")[:1])
    for name in MOVED_WITH_TASK_FK:
        model = apps.get_model("tasks", name)
        model.objects.exclude(task_public_id="").update(task_id=pk)


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskevent",
            name="task_public_id",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.AddField(
            model_name="webhookdelivery",
            name="task_public_id",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.RunPython(copy_public_ids, copy_task_keys),
    ]
