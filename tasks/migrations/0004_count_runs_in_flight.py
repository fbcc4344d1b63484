"""Executors count their runs in flight (``integrations.0006``): start the counters from the tasks
running now, so dispatch by claim neither over- nor under-fills an executor after the upgrade."""

from django.db import migrations
from django.db.models import Count


def count(apps, schema_editor):
    Task = apps.get_model("tasks", "Task")
    Executor = apps.get_model("integrations", "Executor")
    running = (
        Task.objects.filter(status="running", executor__isnull=False)
        .values("executor_id")
        .annotate(n=Count("id"))
    )
    for row in running:
        Executor.objects.filter(pk=row["executor_id"]).update(in_flight=row["n"])


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0003_live_events_to_realtime"),
        ("integrations", "0006_executor_in_flight"),
    ]

    operations = [migrations.RunPython(count, migrations.RunPython.noop)]
