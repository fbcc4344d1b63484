"""A database migrated at the old layout (live events inside ``tasks``) upgrades in place: every
row of the four moved tables is still there, read through ``podi.realtime``'s models."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from podi.realtime.models import Event, EventCursor, WebhookAttempt, WebhookDelivery

# The migration leaves of main before the move (tasks 0002/0003 and realtime 0001 come after).
OLD_LEAVES = [
    ("podi", "0002_servicekey_webhook_secret"),
    ("wallet", "0001_initial"),
    ("integrations", "0002_agents"),
    ("media_app", "0001_initial"),
    ("tasks", "0001_initial"),
    ("realtime", None),
]
CREATED = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 1, 12, 5, 0, tzinfo=UTC)


def migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def latest_leaves() -> list[tuple[str, str]]:
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.fixture
def old_layout():
    """The test database at the old leaves; back at the latest afterwards, for other tests."""
    migrate(OLD_LEAVES)
    yield MigrationExecutor(connection).loader.project_state(OLD_LEAVES[:-1]).apps
    migrate(latest_leaves())
    ContentType.objects.clear_cache()


@pytest.mark.django_db(transaction=True)
def test_live_event_rows_survive_the_move_to_realtime(old_layout):
    apps = old_layout
    User = apps.get_model("auth", "User")
    ServiceKey = apps.get_model("podi", "ServiceKey")
    Ability = apps.get_model("integrations", "Ability")
    Task = apps.get_model("tasks", "Task")
    user = User.objects.create(username="upgrader", password="!")
    keyholder = User.objects.create(username="upgrade-keys", password="!")
    key = ServiceKey.objects.create(
        name="upgrade", prefix="psk_upgr", key_hash="h" * 64, user=keyholder
    )
    ability = Ability.objects.create(code="upgrade-upscale", display_name="Upscale")
    task = Task.objects.create(
        public_id="tsk_upgrade1", user=user, ability=ability, action="upgrade-upscale"
    )
    apps.get_model("tasks", "EventCursor").objects.create(user=user, last_seq=2)
    TaskEvent = apps.get_model("tasks", "TaskEvent")
    linked = TaskEvent.objects.create(
        public_id="evt_upgrade1",
        user=user,
        seq=1,
        task=task,
        type="task.status",
        payload={"taskId": "tsk_upgrade1", "status": "succeeded", "progress": 100},
        created_at=CREATED,
    )
    loose = TaskEvent.objects.create(
        public_id="evt_upgrade2",
        user=user,
        seq=2,
        task=None,
        type="wallet.points",
        payload={"status": "granted", "points": 5, "balance": 5},
        created_at=LATER,
    )
    delivery = apps.get_model("tasks", "WebhookDelivery").objects.create(
        public_id="msg_upgrade1",
        user=user,
        task=task,
        service_key=key,
        event_type="task.succeeded",
        url="https://example.com/hook",
        payload={"type": "task.succeeded", "taskId": "tsk_upgrade1"},
        status="failed",
        attempts=1,
        next_attempt_at=LATER,
        last_status_code=500,
        last_error="HTTP 500 nope",
        created_at=CREATED,
    )
    attempt = apps.get_model("tasks", "WebhookAttempt").objects.create(
        delivery=delivery,
        number=1,
        started_at=CREATED,
        status_code=500,
        latency_ms=42,
        error="HTTP 500 nope",
        next_attempt_at=LATER,
    )
    old_type = ContentType.objects.get_or_create(app_label="tasks", model="webhookdelivery")[0]

    migrate(latest_leaves())

    assert list(EventCursor.objects.values_list("user_id", "last_seq")) == [(user.pk, 2)]
    assert list(
        Event.objects.order_by("seq").values_list(
            "pk", "public_id", "user_id", "seq", "task_public_id", "type", "payload", "created_at"
        )
    ) == [
        (
            linked.pk,
            "evt_upgrade1",
            user.pk,
            1,
            "tsk_upgrade1",
            "task.status",
            {"taskId": "tsk_upgrade1", "status": "succeeded", "progress": 100},
            CREATED,
        ),
        (
            loose.pk,
            "evt_upgrade2",
            user.pk,
            2,
            "",
            "wallet.points",
            {"status": "granted", "points": 5, "balance": 5},
            LATER,
        ),
    ]
    moved = WebhookDelivery.objects.get()
    assert (
        moved.pk,
        moved.public_id,
        moved.user_id,
        moved.task_public_id,
        moved.service_key_id,
        moved.event_type,
        moved.url,
        moved.payload,
        moved.status,
        moved.attempts,
        moved.next_attempt_at,
        moved.last_status_code,
        moved.last_error,
        moved.created_at,
        moved.delivered_at,
    ) == (
        delivery.pk,
        "msg_upgrade1",
        user.pk,
        "tsk_upgrade1",
        key.pk,
        "task.succeeded",
        "https://example.com/hook",
        {"type": "task.succeeded", "taskId": "tsk_upgrade1"},
        WebhookDelivery.Status.FAILED,
        1,
        LATER,
        500,
        "HTTP 500 nope",
        CREATED,
        None,
    )
    assert list(
        WebhookAttempt.objects.values_list(
            "pk",
            "delivery_id",
            "number",
            "started_at",
            "status_code",
            "latency_ms",
            "error",
            "next_attempt_at",
        )
    ) == [(attempt.pk, delivery.pk, 1, CREATED, 500, 42, "HTTP 500 nope", LATER)]
    # The tables carry this app's names now; permissions and admin history follow the models.
    tables = set(connection.introspection.table_names())
    assert {"realtime_event", "realtime_eventcursor", "realtime_webhookdelivery"} <= tables
    assert "realtime_webhookattempt" in tables
    assert not {t for t in tables if t.startswith("tasks_") and "event" in t}
    old_type.refresh_from_db()
    assert (old_type.app_label, old_type.model) == ("realtime", "webhookdelivery")
    # New rows get fresh ids after the moved ones (the sequences came along).
    fresh = Event.objects.create(
        public_id="evt_upgrade3", user_id=user.pk, seq=3, type="x.y", payload={}
    )
    assert fresh.pk > loose.pk
    # Deleting the user still cascades over the moved rows (their foreign keys survived).
    get_user_model().objects.filter(pk=user.pk).delete()
    assert not Event.objects.exists() and not WebhookAttempt.objects.exists()
