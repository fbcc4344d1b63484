"""GPU-server agents, their manifests, the sync tasks PODI pushes to them, and their alerts.

Writes go through ``integrations.agents.services``; these models hold only per-instance logic.
The tables keep the names they had inside ``integrations`` (``db_table``), so moving the models
into their own app was a state-only migration (docs/adr/0008-gpu-server-agents.md).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from integrations.models import Executor, ImmutableVersionError


class Agent(models.Model):
    """A GPU-server agent, registered by an operator and linked to the ComfyUI executor it runs
    next to. Its tokens are JWTs (``integrations.agents.tokens``); none is stored here."""

    class Status(models.TextChoices):
        UNKNOWN = "unknown", "never seen"
        ONLINE = "online", "online"
        OFFLINE = "offline", "offline"

    name = models.CharField(max_length=100, unique=True)
    executor = models.ForeignKey(Executor, on_delete=models.PROTECT, related_name="agents")
    base_url = models.CharField(
        max_length=500,
        help_text="http(s)://host:port of the agent; PODI pushes to {baseUrl}/tasks.",
    )
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UNKNOWN)
    status_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)
    reported_status = models.CharField(max_length=32, blank=True, editable=False)
    agent_version = models.CharField(max_length=64, blank=True, editable=False)
    comfyui_version = models.CharField(max_length=64, blank=True, editable=False)
    metrics = models.JSONField(default=dict, blank=True, editable=False)
    manifest_version = models.ForeignKey(
        "ManifestVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        help_text="The manifest version of the agent's last successful sync.",
    )
    # Revocation: every token carries the version it was minted under; bumping it kills them all.
    token_version = models.PositiveIntegerField(default=1, editable=False)
    token_kid = models.CharField(max_length=64, blank=True, editable=False)
    token_jti = models.CharField(max_length=64, blank=True, editable=False)
    token_issued_at = models.DateTimeField(null=True, blank=True, editable=False)
    token_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    tokens_revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "integrations_agent"  # kept from before the move (ADR 0008)
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["executor"], name="agent_one_per_executor"),
            models.CheckConstraint(condition=Q(token_version__gte=1), name="agent_token_ver_gte_1"),
        ]

    def __str__(self) -> str:
        return self.name

    def offline_cutoff(self, now=None):
        """Heartbeats older than this mean offline (three missed intervals)."""
        return (now or timezone.now()) - timedelta(seconds=3 * settings.AGENT_HEARTBEAT_INTERVAL)

    def is_overdue(self, now=None) -> bool:
        return self.last_heartbeat_at is not None and self.last_heartbeat_at < self.offline_cutoff(
            now
        )


class Manifest(models.Model):
    """What an agent syncs its server to: a named, versioned resource list."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    latest_version = models.ForeignKey(
        "ManifestVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "integrations_manifest"  # kept from before the move (ADR 0008)
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ManifestVersion(models.Model):
    """One immutable version of a manifest: ``{comfyui: {repo, commit}, plugins, workflows,
    models}``, validated by ``integrations.agents.manifests.clean_manifest``."""

    manifest = models.ForeignKey(Manifest, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    content = models.JSONField()
    changelog = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "integrations_manifestversion"  # kept from before the move (ADR 0008)
        ordering = ["manifest", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["manifest", "version"], name="manifest_version_unique"),
            models.CheckConstraint(condition=Q(version__gte=1), name="manifest_version_gte_1"),
        ]

    def __str__(self) -> str:
        return f"{self.manifest.name} v{self.version}"

    def save(self, *args, **kwargs):
        # Integrity guard, as for workflow versions: what an agent synced to never changes.
        if not self._state.adding:
            raise ImmutableVersionError("Manifest versions are immutable; create a new version.")
        return super().save(*args, **kwargs)


class AgentTaskAction(models.TextChoices):
    SYNC_MODELS = "sync_models", "sync models"
    SYNC_PLUGINS = "sync_plugins", "sync plugins"
    SYNC_WORKFLOWS = "sync_workflows", "sync workflows"
    RESTART = "restart", "restart ComfyUI"


class AgentTask(models.Model):
    """A sync task pushed to an agent: pending → running → succeeded | failed | expired."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        EXPIRED = "expired", "expired"

    TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.EXPIRED})

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tasks")
    manifest_version = models.ForeignKey(
        ManifestVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="tasks"
    )
    actions = models.JSONField(default=list)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    expires_at = models.DateTimeField()
    # Push bookkeeping: when the next push is due, who holds it now, how it went.
    next_push_at = models.DateTimeField(null=True, blank=True)
    push_claimed_at = models.DateTimeField(null=True, blank=True)
    push_attempts = models.PositiveIntegerField(default=0)
    push_failures = models.PositiveIntegerField(default=0)
    last_push_at = models.DateTimeField(null=True, blank=True)
    last_push_error = models.TextField(blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "integrations_agenttask"  # kept from before the move (ADR 0008)
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["status", "next_push_at"], name="agenttask_push_idx"),
            models.Index(fields=["status", "expires_at"], name="agenttask_expiry_idx"),
            models.Index(fields=["agent", "-created_at"], name="agenttask_agent_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__lte=100), name="agenttask_progress_lte_100"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({', '.join(self.actions)}) → {self.agent_id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    def is_expired(self, now=None) -> bool:
        return self.status == self.Status.EXPIRED or (
            not self.is_terminal and self.expires_at <= (now or timezone.now())
        )


class AgentTaskEvent(models.Model):
    """What happened to an agent task: PODI's push attempts and the agent's own reports."""

    task = models.ForeignKey(AgentTask, on_delete=models.CASCADE, related_name="events")
    source = models.CharField(max_length=10, choices=[("podi", "PODI"), ("agent", "agent")])
    type = models.CharField(max_length=32)
    message = models.TextField(blank=True)
    progress = models.PositiveSmallIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        db_table = "integrations_agenttaskevent"  # kept from before the move (ADR 0008)
        ordering = ["task", "created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.type}: {self.message[:60]}"


class Alert(models.Model):
    """An agent alert: sent by the agent, or raised by PODI (``agent.offline`` / ``agent.online``)."""

    class Severity(models.TextChoices):
        INFO = "info", "info"
        WARNING = "warning", "warning"
        CRITICAL = "critical", "critical"

    OFFLINE = "agent.offline"
    ONLINE = "agent.online"

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="alerts")
    source = models.CharField(max_length=10, choices=[("podi", "PODI"), ("agent", "agent")])
    type = models.CharField(max_length=64)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    message = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        db_table = "integrations_alert"  # kept from before the move (ADR 0008)
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["agent", "-created_at"], name="alert_agent_idx")]

    def __str__(self) -> str:
        return f"{self.type} ({self.severity})"
