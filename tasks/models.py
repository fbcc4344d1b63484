from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class TaskStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})
DEFAULT_CALLBACK_EVENTS = ["task.succeeded", "task.failed", "task.canceled"]


class TaskBatch(models.Model):
    public_id = models.CharField(max_length=32, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    action = models.CharField(max_length=100)
    template = models.ForeignKey(
        "tasks.TaskTemplate", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    points = models.PositiveIntegerField(default=0)
    callback_url = models.URLField(max_length=2000, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "task batches"

    def __str__(self) -> str:
        return self.public_id


class Task(models.Model):
    public_id = models.CharField(max_length=32, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks"
    )
    ability = models.ForeignKey(
        "integrations.Ability", on_delete=models.PROTECT, related_name="tasks"
    )
    action = models.CharField(max_length=100, db_index=True)
    preset = models.CharField(max_length=100, blank=True)
    binding = models.ForeignKey(
        "integrations.WorkflowBinding",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="tasks",
    )
    executor = models.ForeignKey(
        "integrations.Executor",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="tasks",
    )
    params = models.JSONField(default=dict)
    inputs = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    priority = models.IntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    points = models.PositiveIntegerField(default=0)
    hold_id = models.CharField(max_length=32, blank=True)
    callback_url = models.URLField(max_length=2000, blank=True)
    callback_events = models.JSONField(default=list, blank=True)
    client_ref = models.CharField(max_length=200, blank=True)
    service_key = models.ForeignKey(
        "podi.ServiceKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The service key that submitted the task (its webhook secret signs callbacks).",
    )
    batch = models.ForeignKey(
        TaskBatch, on_delete=models.SET_NULL, null=True, blank=True, related_name="tasks"
    )
    original_task = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries"
    )
    # Executor-side identity of the current attempt (ComfyUI prompt_id, Coze execute_id, …)
    external_id = models.CharField(max_length=200, blank=True)
    executor_state = models.JSONField(default=dict, blank=True)
    queue_timeout = models.PositiveIntegerField(default=600)
    run_timeout = models.PositiveIntegerField(default=600)
    queue_deadline = models.DateTimeField(null=True, blank=True)
    run_deadline = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-priority", "created_at"], name="task_queue_idx"),
            models.Index(fields=["user", "-created_at"], name="task_user_idx"),
            models.Index(fields=["executor", "status"], name="task_executor_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(progress__lte=100), name="task_progress_at_most_100"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.action} {self.status}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class AbilityInvocationLog(Task):
    """Per-ability invocation statistics in the admin (seed 000's "ability invocation log")."""

    class Meta:
        proxy = True
        verbose_name = "ability invocation stats"
        verbose_name_plural = "ability invocation stats"


class TaskAsset(models.Model):
    class Kind(models.TextChoices):
        INPUT = "input"
        OUTPUT = "output"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assets")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    object_key = models.CharField(max_length=1024)
    mime_type = models.CharField(max_length=200, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    node_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "kind", "object_key"], name="task_asset_unique")
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.object_key}"


class TaskTemplate(models.Model):
    """A named ability with default params and a list of items (seed 001's task templates)."""

    public_id = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    ability = models.ForeignKey("integrations.Ability", on_delete=models.PROTECT, related_name="+")
    params = models.JSONField(default=dict, blank=True, help_text="Default params of every item.")
    items = models.JSONField(
        default=list, help_text='A list of {"params": {…}, "inputs": […]} objects.'
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
