"""Moving the agents into their own app keeps every row: a database migrated to the schema before
the move (``integrations.0002_agents``, no ``agents`` app) upgrades in place.

The test migrates the test database back to that schema, writes one row in every moved table
through the historical models, migrates to the latest schema and reads each row back through
today's models. It ends with the database at the latest schema, as it found it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from integrations.agents.models import (
    Agent,
    AgentTask,
    AgentTaskEvent,
    Alert,
    Manifest,
    ManifestVersion,
)
from integrations.models import Executor

pytestmark = pytest.mark.django_db(transaction=True)

MOVED = ("agent", "manifest", "manifestversion", "agenttask", "agenttaskevent", "alert")
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T1 = datetime(2026, 1, 2, 4, 0, 0, tzinfo=UTC)
T2 = datetime(2026, 1, 3, 0, 0, 0, tzinfo=UTC)


def before_the_move(executor: MigrationExecutor) -> list[tuple[str, str | None]]:
    """Every app at its leaf, except ``integrations`` at 0002_agents and no ``agents`` at all:
    the migration state of the code before the move."""
    graph = executor.loader.graph
    then = set(graph.forwards_plan(("integrations", "0002_agents")))

    def fits(node) -> bool:  # needs no integrations or agents migration of after the move
        return all(
            n in then or n[0] not in ("integrations", "agents") for n in graph.forwards_plan(node)
        )

    targets: list[tuple[str, str | None]] = []
    for leaf in graph.leaf_nodes():
        if leaf[0] in ("integrations", "agents"):
            continue
        node = leaf  # later migrations of other apps may build on later integrations ones
        while node is not None and not fits(node):
            parents = [p for p in graph.node_map[node].parents if p.key[0] == node[0]]
            node = parents[0].key if parents else None
        targets.append(node or (leaf[0], None))
    return [*targets, ("integrations", "0002_agents"), ("agents", None)]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection)  # a fresh loader sees what is applied now


def rows(model) -> list[dict]:
    return list(model.objects.order_by("pk").values())


def test_rows_in_every_moved_table_survive_the_upgrade():
    executor = MigrationExecutor(connection)
    old_targets = before_the_move(executor)
    latest = executor.loader.graph.leaf_nodes()
    executor = migrate(old_targets)
    try:
        assert ("agents", "0001_initial") not in executor.loader.applied_migrations
        old = executor.loader.project_state([t for t in old_targets if t[1] is not None]).apps

        user = old.get_model("auth", "User").objects.create(
            username="operator", email="op@example.com", is_staff=True
        )
        executor_row = old.get_model("integrations", "Executor").objects.create(
            name="gpu-1", kind="comfyui", base_url="http://10.0.0.5:8188"
        )
        manifest = old.get_model("integrations", "Manifest").objects.create(
            name="sdxl-stack", description="SDXL and friends", created_at=T0
        )
        version = old.get_model("integrations", "ManifestVersion").objects.create(
            manifest=manifest,
            version=1,
            content={"comfyui": {"repo": "https://github.com/x/y", "commit": "abcdef1"}},
            changelog="first",
            created_at=T0,
            created_by=user,
        )
        manifest.latest_version = version
        manifest.save()
        agent = old.get_model("integrations", "Agent").objects.create(
            name="agent-1",
            executor=executor_row,
            base_url="http://10.0.0.5:9100",
            enabled=True,
            description="rack 3",
            status="online",
            status_changed_at=T0,
            last_heartbeat_at=T1,
            reported_status="ok",
            agent_version="1.4.0",
            comfyui_version="0.3.10",
            metrics={"cpu": 12.5, "gpu": [{"util": 80}]},
            manifest_version=version,
            token_version=3,
            token_kid="k1",
            token_jti="jti-123",
            token_issued_at=T0,
            token_expires_at=T2,
            tokens_revoked_at=T0,
            created_at=T0,
        )
        task = old.get_model("integrations", "AgentTask").objects.create(
            public_id="atk_upgrade0000000000000001",
            agent=agent,
            manifest_version=version,
            actions=["sync_models", "restart"],
            status="failed",
            progress=40,
            expires_at=T2,
            next_push_at=None,
            push_claimed_at=T0,
            push_attempts=2,
            push_failures=1,
            last_push_at=T1,
            last_push_error="HTTP 503",
            accepted_at=T0,
            started_at=T0,
            finished_at=T1,
            result={"synced": 3},
            error_code="AGENT_PUSH_FAILED",
            error_message="gave up",
            created_by=user,
            created_at=T0,
        )
        event = old.get_model("integrations", "AgentTaskEvent").objects.create(
            task=task,
            source="agent",
            type="progress",
            message="downloading",
            progress=40,
            payload={"file": "sdxl.safetensors"},
            created_at=T1,
        )
        alert = old.get_model("integrations", "Alert").objects.create(
            public_id="alr_upgrade0000000000000001",
            agent=agent,
            source="podi",
            type="agent.offline",
            severity="critical",
            message="no heartbeat",
            payload={"executor": executor_row.pk},
            acknowledged_at=T1,
            acknowledged_by=user,
            created_at=T0,
        )
        before = {
            name: rows(old.get_model("integrations", name))
            for name in (
                "Agent",
                "Manifest",
                "ManifestVersion",
                "AgentTask",
                "AgentTaskEvent",
                "Alert",
            )
        }
        old_content_type = old.get_model("contenttypes", "ContentType")
        content_type_ids = dict(
            old_content_type.objects.filter(app_label="integrations", model__in=MOVED).values_list(
                "model", "pk"
            )
        )
    finally:
        executor = migrate(latest)
        ContentType.objects.clear_cache()

    assert ("agents", "0001_initial") in executor.loader.applied_migrations
    assert ("integrations", "0003_agents_moved_out") in executor.loader.applied_migrations
    # Every column of every row, exactly as it was written.
    assert rows(Agent) == before["Agent"]
    assert rows(Manifest) == before["Manifest"]
    assert rows(ManifestVersion) == before["ManifestVersion"]
    assert rows(AgentTask) == before["AgentTask"]
    assert rows(AgentTaskEvent) == before["AgentTaskEvent"]
    assert rows(Alert) == before["Alert"]

    # And through today's models and their relations.
    moved = Agent.objects.select_related("executor", "manifest_version__manifest").get(pk=agent.pk)
    assert moved.executor == Executor.objects.get(name="gpu-1")
    assert (moved.name, moved.status, moved.token_version, moved.metrics) == (
        "agent-1",
        Agent.Status.ONLINE,
        3,
        {"cpu": 12.5, "gpu": [{"util": 80}]},
    )
    assert (moved.last_heartbeat_at, moved.token_expires_at) == (T1, T2)
    assert moved.manifest_version.manifest.name == "sdxl-stack"
    assert moved.manifest_version.manifest.latest_version_id == version.pk
    moved_task = AgentTask.objects.get(public_id="atk_upgrade0000000000000001")
    assert (moved_task.agent_id, moved_task.manifest_version_id, moved_task.created_by_id) == (
        agent.pk,
        version.pk,
        user.pk,
    )
    assert (moved_task.status, moved_task.actions, moved_task.result) == (
        AgentTask.Status.FAILED,
        ["sync_models", "restart"],
        {"synced": 3},
    )
    assert [e.pk for e in moved_task.events.all()] == [event.pk]
    assert moved_task.events.get().payload == {"file": "sdxl.safetensors"}
    moved_alert = Alert.objects.get(public_id="alr_upgrade0000000000000001")
    assert (moved_alert.agent_id, moved_alert.acknowledged_by_id, moved_alert.acknowledged_at) == (
        agent.pk,
        user.pk,
        T1,
    )
    assert list(moved.alerts.values_list("pk", flat=True)) == [alert.pk]

    # The content types (so permissions and admin history) moved with the models.
    assert set(content_type_ids) == set(MOVED)
    assert (
        dict(
            ContentType.objects.filter(app_label="agents", model__in=MOVED).values_list(
                "model", "pk"
            )
        )
        == content_type_ids
    )
    assert not ContentType.objects.filter(app_label="integrations", model__in=MOVED).exists()
