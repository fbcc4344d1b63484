"""GPU-server agents moved to their own app (``integrations.agents``, label ``agents``).

State only: the tables stay where they are, under their old names, and ``agents.0001_initial``
takes them over (docs/adr/0008-gpu-server-agents.md). Nothing in the database changes.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0002_agents"),
        ("agents", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name="agenttask",
                    name="agent",
                ),
                migrations.RemoveField(
                    model_name="alert",
                    name="agent",
                ),
                migrations.RemoveField(
                    model_name="agenttask",
                    name="created_by",
                ),
                migrations.RemoveField(
                    model_name="agenttask",
                    name="manifest_version",
                ),
                migrations.RemoveField(
                    model_name="agenttaskevent",
                    name="task",
                ),
                migrations.RemoveField(
                    model_name="alert",
                    name="acknowledged_by",
                ),
                migrations.RemoveField(
                    model_name="manifest",
                    name="latest_version",
                ),
                migrations.RemoveField(
                    model_name="manifestversion",
                    name="manifest",
                ),
                migrations.RemoveField(
                    model_name="manifestversion",
                    name="created_by",
                ),
                migrations.DeleteModel(
                    name="Agent",
                ),
                migrations.DeleteModel(
                    name="AgentTask",
                ),
                migrations.DeleteModel(
                    name="AgentTaskEvent",
                ),
                migrations.DeleteModel(
                    name="Alert",
                ),
                migrations.DeleteModel(
                    name="Manifest",
                ),
                migrations.DeleteModel(
                    name="ManifestVersion",
                ),
            ],
            database_operations=[],
        ),
    ]
