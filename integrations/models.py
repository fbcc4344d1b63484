"""The integrations catalog: executors, vendor keys, versioned workflows, abilities, bindings, presets.

Writes go through ``integrations.services``; these models hold only per-instance logic.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from podi.crypto import decrypt_secret


class ExecutorKind(models.TextChoices):
    COMFYUI = "comfyui", "ComfyUI"
    COZE = "coze", "Coze"
    HTTP = "http", "HTTP API"


class HealthStatus(models.TextChoices):
    HEALTHY = "healthy", "healthy"
    UNHEALTHY = "unhealthy", "unhealthy"
    UNKNOWN = "unknown", "unknown"


class VendorApiKey(models.Model):
    """A credential for a vendor API (Coze token, model API key…), encrypted at rest (Fernet)."""

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        DISABLED = "disabled", "disabled"

    provider = models.CharField(max_length=50, help_text="e.g. coze, openai, aliyun, volcengine")
    name = models.CharField(max_length=100)
    secret_encrypted = models.TextField(editable=False)
    secret_hint = models.CharField(
        max_length=32, editable=False, blank=True, help_text="Masked form, e.g. pat_…a1b2."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    priority = models.IntegerField(default=0, help_text="Higher is used first.")
    daily_quota = models.PositiveIntegerField(
        null=True, blank=True, help_text="Calls per UTC day; empty = unlimited."
    )
    used_today = models.PositiveIntegerField(default=0, editable=False)
    usage_date = models.DateField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "-priority", "id"]
        verbose_name = "vendor API key"
        constraints = [
            models.CheckConstraint(condition=Q(used_today__gte=0), name="apikey_used_today_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.provider}: {self.name} ({self.masked})"

    def reveal(self) -> str:
        """The plain secret. Server-side only: never put it in a response, log or page."""
        return decrypt_secret(self.secret_encrypted)

    @property
    def masked(self) -> str:
        return self.secret_hint or "…"

    def usage_on(self, day) -> int:
        return self.used_today if self.usage_date == day else 0

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def is_exhausted(self, day=None) -> bool:
        day = day or timezone.now().date()
        return self.daily_quota is not None and self.usage_on(day) >= self.daily_quota

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return (
            self.status == self.Status.ACTIVE
            and not self.is_expired(now)
            and not self.is_exhausted(now.date())
        )

    def quota_ratio(self, day=None) -> float | None:
        if not self.daily_quota:
            return None
        return self.usage_on(day or timezone.now().date()) / self.daily_quota


class Executor(models.Model):
    """A backend PODI dispatches to: a ComfyUI server, a Coze account, or an HTTP model API."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ExecutorKind.choices)
    base_url = models.CharField(max_length=500, help_text="http(s)://host:port of the executor.")
    enabled = models.BooleanField(default=True)
    max_concurrency = models.PositiveIntegerField(
        default=1, help_text="Runs in flight on this executor at most (prompts in its queue)."
    )
    in_flight = models.PositiveIntegerField(
        default=0,
        editable=False,
        help_text="Runs PODI has on this executor now: claimed by one guarded update at dispatch, "
        "given back when the run ends; the reconciler recounts it from the running tasks.",
    )
    weight = models.PositiveIntegerField(default=1)
    config = models.JSONField(default=dict, blank=True)
    api_keys = models.ManyToManyField(VendorApiKey, blank=True, related_name="executors")
    health_status = models.CharField(
        max_length=10, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN
    )
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_error = models.TextField(blank=True)
    health_details = models.JSONField(default=dict, blank=True)
    health_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_concurrency__gte=1), name="executor_max_concurrency_gte_1"
            ),
            models.CheckConstraint(condition=Q(weight__gte=0), name="executor_weight_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def is_dispatchable(self) -> bool:
        return self.enabled and self.health_status != HealthStatus.UNHEALTHY

    def timeout_config(self) -> tuple[float, float]:
        """(connect, read) seconds for calls to this executor."""
        default = float(settings.EXECUTOR_HTTP_TIMEOUT)
        connect = float(self.config.get("connect_timeout") or min(default, 10.0))
        read = float(self.config.get("read_timeout") or default)
        return connect, read


class Workflow(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ExecutorKind.choices)
    description = models.TextField(blank=True)
    active_version = models.ForeignKey(
        "WorkflowVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ImmutableVersionError(Exception):
    pass


class WorkflowVersion(models.Model):
    """One immutable version of a workflow; create them with ``workflow_version_create``."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    definition = models.JSONField()
    params_schema = models.JSONField(default=dict)
    outputs = models.JSONField(default=list, blank=True)
    changelog = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        ordering = ["workflow", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "version"], name="workflow_version_unique"),
            models.CheckConstraint(condition=Q(version__gte=1), name="workflow_version_gte_1"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.name} v{self.version}"

    def save(self, *args, **kwargs):
        # Integrity guard, not business logic: a version that tasks ran with never changes.
        if not self._state.adding:
            raise ImmutableVersionError("Workflow versions are immutable; create a new version.")
        return super().save(*args, **kwargs)


class Ability(models.Model):
    """What apps can ask for; its ``code`` is a task's ``action``."""

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        INACTIVE = "inactive", "inactive"

    code = models.SlugField(max_length=100, unique=True)
    display_name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    category = models.CharField(max_length=50, blank=True)
    provider = models.CharField(max_length=50, blank=True)
    points = models.PositiveIntegerField(default=0, help_text="Price per task, in points.")
    defaults = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    requires_image = models.BooleanField(default=False)
    max_outputs = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["code"]
        verbose_name_plural = "abilities"

    def __str__(self) -> str:
        return self.code


class WorkflowBinding(models.Model):
    """Ability → workflow (pinned version or the active one) on an executor."""

    ability = models.ForeignKey(Ability, on_delete=models.PROTECT, related_name="bindings")
    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="bindings")
    workflow_version = models.ForeignKey(
        WorkflowVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="bindings",
        help_text="Empty: the workflow's active version.",
    )
    executor = models.ForeignKey(Executor, on_delete=models.PROTECT, related_name="bindings")
    priority = models.IntegerField(default=0, help_text="Higher is tried first.")
    weight = models.PositiveIntegerField(default=1)
    enabled = models.BooleanField(default=True)
    max_attempts = models.PositiveIntegerField(default=3)
    queue_timeout = models.PositiveIntegerField(default=600, help_text="Seconds.")
    run_timeout = models.PositiveIntegerField(default=600, help_text="Seconds.")
    # ComfyUI: node classes the resolved version needs that the executor's last /object_info
    # lacked. Non-empty = dispatch skips this binding (the executor's other bindings still run).
    missing_node_classes = models.JSONField(default=list, blank=True, editable=False)
    nodes_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["ability", "-priority", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(max_attempts__gte=1), name="binding_attempts_gte_1"),
            models.CheckConstraint(
                condition=Q(queue_timeout__gte=1), name="binding_queue_to_gte_1"
            ),
            models.CheckConstraint(condition=Q(run_timeout__gte=1), name="binding_run_to_gte_1"),
        ]

    def __str__(self) -> str:
        pinned = f" v{self.workflow_version.version}" if self.workflow_version_id else ""
        return f"{self.ability.code} → {self.workflow.name}{pinned} @ {self.executor.name}"

    def resolved_version(self) -> WorkflowVersion | None:
        """The pinned version, else the workflow's active one (None when it has none)."""
        if self.workflow_version_id:
            return self.workflow_version
        return self.workflow.active_version

    @property
    def is_runnable(self) -> bool:
        """Whether dispatch may use it now: enabled, executor dispatchable, no missing nodes."""
        return self.enabled and self.executor.is_dispatchable and not self.missing_node_classes


class NodeInventory(models.Model):
    """The node classes a ComfyUI executor answered at its last health check (``/object_info``),
    kept apart from ``Executor`` so dispatch never loads the list. Bindings are checked against
    it when the executor is checked and when a version is saved, activated or bound."""

    executor = models.OneToOneField(
        Executor, on_delete=models.CASCADE, primary_key=True, related_name="node_inventory"
    )
    node_classes = models.JSONField(default=list)
    checked_at = models.DateTimeField()

    class Meta:
        verbose_name = "node inventory"
        verbose_name_plural = "node inventories"

    def __str__(self) -> str:
        return f"{self.executor_id}: {len(self.node_classes)} node classes"


class Preset(models.Model):
    """A named set of param values for an ability (seed 004's "styles")."""

    ability = models.ForeignKey(Ability, on_delete=models.CASCADE, related_name="presets")
    name = models.CharField(max_length=100)
    params = models.JSONField(default=dict, blank=True)
    is_base = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["ability", "-is_base", "name"]
        constraints = [
            models.UniqueConstraint(fields=["ability", "name"], name="preset_name_unique"),
            models.UniqueConstraint(
                fields=["ability"], condition=Q(is_base=True), name="preset_one_base_per_ability"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ability.code}: {self.name}{' (base)' if self.is_base else ''}"
