"""Live events move to ``podi.realtime`` (docs/adr/0006-live-events.md), step 2 of 3: drop the
task foreign keys (their public ids were copied in 0002) and hand the four models over. The
tables stay; ``realtime``'s 0001 takes them as they are and renames them."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0002_event_task_public_ids"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="taskevent", name="event_task_idx"),
        migrations.RemoveField(model_name="taskevent", name="task"),
        migrations.RemoveField(model_name="webhookdelivery", name="task"),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="WebhookAttempt"),
                migrations.DeleteModel(name="WebhookDelivery"),
                migrations.DeleteModel(name="TaskEvent"),
                migrations.DeleteModel(name="EventCursor"),
            ],
        ),
    ]
