"""The operator console for GPU-server agents: agents (liveness, versions, metrics, "Mint token",
"Push sync task", "Revoke all tokens"), manifests (JSON editor, version history, readable diffs),
agent tasks (events inline, "Push now") and alerts ("Acknowledge").

Every write goes through ``integrations.agents.services``. No page shows a token after the one
page that mints it, and that page is not cached.
"""

from __future__ import annotations

import difflib
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from integrations.agents.manifests import clean_manifest, manifest_diff
from integrations.agents.models import (
    Agent,
    AgentTask,
    AgentTaskAction,
    AgentTaskEvent,
    Alert,
    Manifest,
    ManifestVersion,
)
from integrations.agents.services.agent_tasks import agent_task_create, agent_task_push_now
from integrations.agents.services.agents import agent_create, agent_delete, agent_update
from integrations.agents.services.alerts import alert_acknowledge
from integrations.agents.services.liveness import MISSED_HEARTBEATS
from integrations.agents.services.manifests import manifest_create, manifest_delete, manifest_update
from integrations.agents.services.tokens import agent_token_mint, agent_tokens_revoke
from integrations.models import ExecutorKind, HealthStatus
from integrations.validation import check_http_url
from podi.admin_helpers import (
    PrettyJSONField,
    ServiceAdminMixin,
    app_error_text,
    as_form_error,
    pretty,
)
from podi.errors import AppError

STATUS_COLOURS = {
    Agent.Status.ONLINE: "#1a7f37",
    Agent.Status.OFFLINE: "#cf222e",
    Agent.Status.UNKNOWN: "#9a6700",
    AgentTask.Status.PENDING: "#9a6700",
    AgentTask.Status.RUNNING: "#0969da",
    AgentTask.Status.SUCCEEDED: "#1a7f37",
    AgentTask.Status.FAILED: "#cf222e",
    AgentTask.Status.EXPIRED: "#6e7781",
    Alert.Severity.INFO: "#0969da",
    Alert.Severity.WARNING: "#9a6700",
    Alert.Severity.CRITICAL: "#cf222e",
    HealthStatus.HEALTHY: "#1a7f37",
    HealthStatus.UNHEALTHY: "#cf222e",
    HealthStatus.UNKNOWN: "#9a6700",
}
DIFF_STYLES = {"added": "#e6ffec", "removed": "#ffebe9", "changed": "#fff8c5"}


def badge(value: str, label: str | None = None):
    return format_html(
        '<span style="color:#fff;background:{};padding:1px 7px;border-radius:8px">{}</span>',
        STATUS_COLOURS.get(value, "#666"),
        label or value,
    )


def ago(value) -> str:
    return f"{timesince(value)} ago" if value else "never"


def liveness_badge(agent: Agent):
    label = {Agent.Status.UNKNOWN: "never seen"}.get(agent.status, agent.status)
    return format_html(
        '{} <small style="color:#666">{}</small>',
        badge(agent.status, label),
        f"heartbeat {ago(agent.last_heartbeat_at)}",
    )


def _offline_cutoff():
    return timezone.now() - timedelta(seconds=MISSED_HEARTBEATS * settings.AGENT_HEARTBEAT_INTERVAL)


def _user(request):
    return request.user if request.user.is_authenticated else None


# ============================================================================== agents


class AgentForm(forms.ModelForm):
    class Meta:
        model = Agent
        fields = ["name", "executor", "base_url", "enabled", "description"]
        help_texts = {
            "base_url": "http(s)://host:port of the agent; PODI pushes to {base_url}/tasks."
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "executor" in self.fields:
            self.fields["executor"].queryset = self.fields["executor"].queryset.filter(
                kind=ExecutorKind.COMFYUI
            )

    def clean_base_url(self):
        try:
            return check_http_url(self.cleaned_data.get("base_url"), "base_url")
        except AppError as exc:
            raise as_form_error(exc) from None

    def clean_executor(self):
        executor = self.cleaned_data.get("executor")
        if executor is not None:
            other = Agent.objects.filter(executor=executor).exclude(pk=self.instance.pk or 0)
            if other.exists():
                raise forms.ValidationError(f"Already linked to agent {other.first().name!r}.")
        return executor


class AgentLivenessFilter(admin.SimpleListFilter):
    title = "liveness"
    parameter_name = "liveness"

    def lookups(self, request, model_admin):
        return [
            ("offline", "Offline"),
            ("online", "Online"),
            ("silent", f"Silent for {MISSED_HEARTBEATS} intervals (not marked yet)"),
            ("never", "Never seen"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "silent":
            return queryset.filter(
                status=Agent.Status.ONLINE, last_heartbeat_at__lt=_offline_cutoff()
            )
        if value == "never":
            return queryset.filter(status=Agent.Status.UNKNOWN)
        if value in (Agent.Status.ONLINE, Agent.Status.OFFLINE):
            return queryset.filter(status=value)
        return queryset


class RecentAgentTaskInline(admin.TabularInline):
    model = AgentTask
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["public_id", "actions", "state", "progress", "push_attempts", "created_at"]
    readonly_fields = fields
    verbose_name_plural = "sync tasks"
    ordering = ["-created_at"]

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="status")
    def state(self, obj):
        return badge(obj.status)

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("-created_at")


class AlertInline(admin.TabularInline):
    model = Alert
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["created_at", "type", "level", "message", "acknowledged_at"]
    readonly_fields = fields
    verbose_name_plural = "alerts"
    ordering = ["-created_at"]

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="severity")
    def level(self, obj):
        return badge(obj.severity)


class PushTaskForm(forms.Form):
    actions = forms.MultipleChoiceField(
        choices=AgentTaskAction.choices, widget=forms.CheckboxSelectMultiple
    )
    manifest = forms.ModelChoiceField(
        queryset=Manifest.objects.order_by("name"),
        required=False,
        help_text="Required for sync actions; pinned to its latest version unless you pick one.",
    )
    manifest_version = forms.IntegerField(required=False, min_value=1, label="manifest version")
    ttl_seconds = forms.IntegerField(
        required=False,
        min_value=60,
        max_value=7 * 86400,
        label="expires after (s)",
        help_text="Default: AGENT_TASK_TOKEN_TTL.",
    )


@admin.register(Agent)
class AgentAdmin(ServiceAdminMixin, admin.ModelAdmin):
    create_service = agent_create
    update_service = agent_update
    delete_service = agent_delete
    service_fields = ["name", "executor", "base_url", "enabled", "description"]
    form = AgentForm
    list_display = [
        "name",
        "liveness",
        "enabled",
        "executor_link",
        "executor_health",
        "versions",
        "metrics_short",
        "synced_manifest",
        "token_state",
    ]
    list_filter = [AgentLivenessFilter, "enabled", "executor__health_status"]
    search_fields = ["name", "base_url", "executor__name", "agent_version", "comfyui_version"]
    list_select_related = ["executor", "manifest_version__manifest"]
    actions = ["mint_token", "push_sync_task", "revoke_tokens", "enable", "disable"]
    inlines = [RecentAgentTaskInline, AlertInline]
    readonly_fields = [
        "liveness",
        "status_changed_at",
        "reported_status",
        "agent_version",
        "comfyui_version",
        "metrics_pretty",
        "synced_manifest",
        "token_state",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "executor", "base_url", "enabled", "description"]}),
        (
            "Liveness",
            {
                "fields": [
                    "liveness",
                    "status_changed_at",
                    "reported_status",
                    "agent_version",
                    "comfyui_version",
                    "metrics_pretty",
                    "synced_manifest",
                ]
            },
        ),
        ("Tokens (never shown after minting)", {"fields": ["token_state"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]
    change_form_template = "admin/agents/agent/change_form.html"

    def get_fieldsets(self, request, obj=None):
        return self.fieldsets if obj else self.fieldsets[:1]

    @admin.display(description="liveness", ordering="status")
    def liveness(self, obj):
        return liveness_badge(obj)

    @admin.display(description="executor", ordering="executor__name")
    def executor_link(self, obj):
        url = reverse("admin:integrations_executor_change", args=[obj.executor_id])
        return format_html('<a href="{}">{}</a>', url, obj.executor.name)

    @admin.display(description="executor health", ordering="executor__health_status")
    def executor_health(self, obj):
        executor = obj.executor
        return format_html(
            '{} <small style="color:#666">{}</small>',
            badge(executor.health_status),
            ago(executor.health_checked_at),
        )

    @admin.display(description="versions")
    def versions(self, obj):
        if not (obj.agent_version or obj.comfyui_version):
            return "—"
        return format_html(
            "agent {}<br><small>ComfyUI {}</small>",
            obj.agent_version or "?",
            obj.comfyui_version or "?",
        )

    @admin.display(description="metrics")
    def metrics_short(self, obj):
        metrics = obj.metrics or {}
        parts = []
        for key, label, unit in (
            ("cpu", "CPU", "%"),
            ("mem", "mem", "%"),
            ("diskFreeGb", "disk free", " GB"),
        ):
            value = metrics.get(key)
            if isinstance(value, int | float):
                parts.append(f"{label} {value:g}{unit}")
        return " · ".join(parts) or "—"

    @admin.display(description="metrics (last heartbeat)")
    def metrics_pretty(self, obj):
        return (
            format_html(
                '<pre style="max-height:24em;overflow:auto;margin:0">{}</pre>', pretty(obj.metrics)
            )
            if obj.metrics
            else "—"
        )

    @admin.display(description="synced manifest")
    def synced_manifest(self, obj):
        version = obj.manifest_version
        if version is None:
            return "—"
        url = reverse("admin:agents_manifestversion_change", args=[version.pk])
        latest = version.manifest.latest_version_id
        stale = "" if latest == version.pk else " (not the latest)"
        return format_html('<a href="{}">{}</a>{}', url, str(version), stale)

    @admin.display(description="token")
    def token_state(self, obj):
        if obj.token_issued_at is None:
            return format_html('<span style="color:#9a6700">{}</span>', "none minted")
        expired = obj.token_expires_at and obj.token_expires_at <= timezone.now()
        return format_html(
            "kid {} · issued {} · {} {}{}",
            obj.token_kid,
            ago(obj.token_issued_at),
            "expired" if expired else "expires",
            timezone.localtime(obj.token_expires_at).strftime("%Y-%m-%d %H:%M"),
            format_html(" · all revoked {}", ago(obj.tokens_revoked_at))
            if obj.tokens_revoked_at
            else "",
        )

    def save_formset(self, request, form, formset, change):
        # The inlines are read-only; nothing to save (what the change message reads stays empty).
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    # ---------------------------------------------------------------- actions

    def _one(self, request, queryset, what: str):
        if queryset.count() != 1:
            self.message_user(request, f"{what} takes exactly one agent.", messages.WARNING)
            return None
        return queryset.first()

    @admin.action(description="Mint a token (shown once)")
    def mint_token(self, request, queryset):
        agent = self._one(request, queryset, "Minting a token")
        if agent is not None:
            return HttpResponseRedirect(reverse("admin:agents_agent_mint_token", args=[agent.pk]))
        return None

    @admin.action(description="Push a sync task")
    def push_sync_task(self, request, queryset):
        agent = self._one(request, queryset, "Pushing a sync task")
        if agent is not None:
            return HttpResponseRedirect(reverse("admin:agents_agent_push_task", args=[agent.pk]))
        return None

    @admin.action(description="Revoke all tokens of the selected agents")
    def revoke_tokens(self, request, queryset):
        for agent in queryset:
            agent_tokens_revoke(agent=agent)
        self.message_user(
            request,
            f"Revoked every token of {queryset.count()} agent(s); mint new ones.",
            messages.WARNING,
        )

    @admin.action(description="Enable selected agents")
    def enable(self, request, queryset):
        for agent in queryset:
            agent_update(agent=agent, enabled=True)
        self.message_user(request, f"Enabled {queryset.count()} agent(s).")

    @admin.action(description="Disable selected agents (their tokens stop working)")
    def disable(self, request, queryset):
        for agent in queryset:
            agent_update(agent=agent, enabled=False)
        self.message_user(request, f"Disabled {queryset.count()} agent(s).")

    def get_urls(self):
        return [
            path(
                "<int:object_id>/mint-token/",
                self.admin_site.admin_view(self.mint_token_view),
                name="agents_agent_mint_token",
            ),
            path(
                "<int:object_id>/push-task/",
                self.admin_site.admin_view(self.push_task_view),
                name="agents_agent_push_task",
            ),
            *super().get_urls(),
        ]

    def _context(self, request, agent, title, **extra):
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "agent": agent,
            **extra,
        }

    def mint_token_view(self, request, object_id: int):
        """GET: a confirmation page. POST: mint and show the token once (never cached)."""
        agent = get_object_or_404(Agent.objects.select_related("executor"), pk=object_id)
        if not self.has_change_permission(request, agent):
            return HttpResponseRedirect(reverse("admin:index"))
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        minted, errors = None, []
        if request.method == "POST":
            try:
                if request.POST.get("revoke_existing"):
                    agent = agent_tokens_revoke(agent=agent)
                minted = agent_token_mint(agent=agent)
            except AppError as exc:
                errors = app_error_text(exc)
        response = TemplateResponse(
            request,
            "admin/agents/agent/mint_token.html",
            self._context(
                request,
                agent,
                f"Mint a token for {agent.name}",
                minted=minted,
                errors=errors,
                ttl_days=settings.AGENT_HEARTBEAT_TOKEN_TTL / 86400,
            ),
        )
        response["Cache-Control"] = "no-store"
        return response

    def push_task_view(self, request, object_id: int):
        agent = get_object_or_404(Agent.objects.select_related("executor"), pk=object_id)
        if not self.has_change_permission(request, agent):
            return HttpResponseRedirect(reverse("admin:index"))
        form = PushTaskForm(request.POST or None)
        errors: list[str] = []
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                task = agent_task_create(
                    agent=agent,
                    actions=list(data["actions"]),
                    manifest=data["manifest"],
                    manifest_version=data["manifest_version"],
                    ttl_seconds=data["ttl_seconds"],
                    created_by=_user(request),
                )
            except AppError as exc:
                errors = app_error_text(exc)
            else:
                level = {
                    AgentTask.Status.RUNNING: messages.SUCCESS,
                    AgentTask.Status.FAILED: messages.ERROR,
                }.get(task.status, messages.WARNING)
                text = f"Task {task.public_id}: {task.status}"
                if task.last_push_error:
                    text += f" — {task.last_push_error}"
                self.message_user(request, text, level)
                return HttpResponseRedirect(
                    reverse("admin:agents_agenttask_change", args=[task.pk])
                )
        return TemplateResponse(
            request,
            "admin/agents/agent/push_task.html",
            self._context(
                request, agent, f"Push a sync task to {agent.name}", form=form, errors=errors
            ),
        )


# ============================================================================== manifests


class ManifestForm(forms.ModelForm):
    """The manifest plus a JSON editor for its next version (pre-filled with the latest one).
    Saving changed JSON creates a new immutable version; problems show next to the editor with
    their field paths."""

    content = PrettyJSONField(
        required=False,
        label="content",
        help_text='{"comfyui": {"repo", "commit"}, "plugins": [{name, repo, commit}], '
        '"workflows": [{name, url, sha256, size?, destPath}], "models": [{name, url, sha256, '
        "size, destPath}]}. destPath is relative to the ComfyUI directory.",
    )
    changelog = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 100})
    )

    class Meta:
        model = Manifest
        fields = ["name", "description"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        latest = self.instance.latest_version if self.instance.pk else None
        if latest is not None and not self.is_bound:
            self.initial["content"] = latest.content

    def clean(self):
        data = super().clean()
        self.new_content = None
        content = data.get("content")
        if content in (None, ""):
            if not self.instance.pk:
                self.add_error("content", "Required for a new manifest.")
            return data
        try:
            cleaned = clean_manifest(content)
        except AppError as exc:
            self.add_error("content", as_form_error(exc))
            return data
        latest = self.instance.latest_version if self.instance.pk else None
        if latest is None or latest.content != cleaned:
            self.new_content = cleaned
        return data


class ManifestVersionInline(admin.TabularInline):
    model = ManifestVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["version", "is_latest", "changelog", "created_at", "created_by", "diff_link"]
    readonly_fields = fields
    verbose_name_plural = "version history"
    ordering = ["-version"]

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="latest")
    def is_latest(self, obj):
        return "✔" if obj.manifest.latest_version_id == obj.pk else ""

    @admin.display(description="diff")
    def diff_link(self, obj):
        if obj.version <= 1:
            return "—"
        url = reverse("admin:agents_manifestversion_change", args=[obj.pk])
        return format_html('<a href="{}#diff">changes since v{}</a>', url, obj.version - 1)


@admin.register(Manifest)
class ManifestAdmin(ServiceAdminMixin, admin.ModelAdmin):
    delete_service = manifest_delete
    form = ManifestForm
    list_display = ["name", "latest", "version_count", "summary", "agents_synced", "updated_at"]
    search_fields = ["name", "description"]
    inlines = [ManifestVersionInline]
    fieldsets = [
        (None, {"fields": ["name", "description"]}),
        (
            "Next version (saving changed JSON creates a new immutable version)",
            {"fields": ["content", "changelog"]},
        ),
    ]

    def get_queryset(self, request):
        on_latest = (
            Agent.objects.filter(manifest_version_id=OuterRef("latest_version_id"))
            .values("manifest_version_id")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .select_related("latest_version")
            .annotate(
                n_versions=Count("versions", distinct=True),
                n_agents_on_latest=Coalesce(Subquery(on_latest), 0),
            )
        )

    @admin.display(description="latest version", ordering="latest_version__version")
    def latest(self, obj):
        return f"v{obj.latest_version.version}" if obj.latest_version else "—"

    @admin.display(description="versions", ordering="n_versions")
    def version_count(self, obj):
        return obj.n_versions

    @admin.display(description="contents")
    def summary(self, obj):
        content = obj.latest_version.content if obj.latest_version else {}
        return (
            f"ComfyUI {(content.get('comfyui') or {}).get('commit', '—')[:12]} · "
            f"{len(content.get('plugins') or [])} plugins · "
            f"{len(content.get('workflows') or [])} workflows · "
            f"{len(content.get('models') or [])} models"
        )

    @admin.display(description="agents on latest", ordering="n_agents_on_latest")
    def agents_synced(self, obj):
        return obj.n_agents_on_latest

    def service_create(self, request, form):
        return manifest_create(
            name=form.cleaned_data["name"],
            description=form.cleaned_data["description"],
            content=form.new_content,
            changelog=form.cleaned_data.get("changelog") or "",
            created_by=_user(request),
        )

    def service_update(self, request, obj, form):
        changes = {
            f: form.cleaned_data[f] for f in ("name", "description") if f in form.changed_data
        }
        manifest = manifest_update(
            manifest=Manifest.objects.get(pk=obj.pk),
            content=form.new_content,
            changelog=form.cleaned_data.get("changelog") or "",
            created_by=_user(request),
            **changes,
        )
        if form.new_content is not None:
            self.message_user(
                request, f"Created version {manifest.latest_version.version}.", messages.SUCCESS
            )

    def save_formset(self, request, form, formset, change):
        # Version history is read-only; nothing to save.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []


def manifest_version_diff(old: ManifestVersion | None, new: ManifestVersion):
    """What changed (in words), then the unified diff of the two contents."""
    if old is None:
        return "— (the first version)"
    changes = manifest_diff(old.content, new.content)
    if not changes:
        return "No difference."
    summary = format_html_join(
        "",
        '<li style="background:{};padding:1px 4px;list-style:none">{} {}</li>',
        (
            (DIFF_STYLES[kind], {"added": "+", "removed": "−", "changed": "~"}[kind], text)
            for kind, text in changes
        ),
    )
    lines = list(
        difflib.unified_diff(
            pretty(old.content, sort_keys=True).splitlines(),
            pretty(new.content, sort_keys=True).splitlines(),
            f"v{old.version}",
            f"v{new.version}",
            lineterm="",
            n=2,
        )
    )
    styles = {"+": "background:#e6ffec", "-": "background:#ffebe9", "@": "color:#8250df"}
    body = format_html_join(
        "\n", '<span style="{}">{}</span>', ((styles.get(line[:1], ""), line) for line in lines)
    )
    return format_html(
        '<ul id="diff" style="margin:0 0 1em 0;padding:0">{}</ul>'
        '<details><summary>JSON diff</summary><pre style="max-height:40em;overflow:auto">{}</pre>'
        "</details>",
        summary,
        body,
    )


@admin.register(ManifestVersion)
class ManifestVersionAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "manifest",
        "version",
        "is_latest",
        "changelog",
        "created_at",
        "created_by",
    ]
    list_filter = ["manifest"]
    search_fields = ["manifest__name", "changelog"]
    list_select_related = ["manifest", "created_by"]
    fields = [
        "manifest",
        "version",
        "is_latest",
        "changelog",
        "created_at",
        "created_by",
        "diff_with_previous",
        "content_pretty",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="latest", boolean=True)
    def is_latest(self, obj):
        return obj.manifest.latest_version_id == obj.pk

    @admin.display(description="content")
    def content_pretty(self, obj):
        return format_html(
            '<pre style="max-height:40em;overflow:auto;margin:0">{}</pre>', pretty(obj.content)
        )

    @admin.display(description="changes since the previous version")
    def diff_with_previous(self, obj):
        previous = (
            obj.manifest.versions.filter(version__lt=obj.version).order_by("-version").first()
        )
        return manifest_version_diff(previous, obj)


# ============================================================================== agent tasks


class AgentTaskEventInline(admin.TabularInline):
    model = AgentTaskEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "source", "type", "progress", "message", "payload"]
    readonly_fields = fields
    verbose_name_plural = "events"
    ordering = ["created_at", "pk"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class StuckFilter(admin.SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [
            ("push_failing", "Pending, pushes failing"),
            ("busy", "Pending, agent busy"),
            ("ended_badly", "Failed or expired"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "push_failing":
            return queryset.filter(status=AgentTask.Status.PENDING, push_failures__gt=0)
        if self.value() == "busy":
            return queryset.filter(
                status=AgentTask.Status.PENDING, push_failures=0, push_attempts__gt=0
            )
        if self.value() == "ended_badly":
            return queryset.filter(status__in=[AgentTask.Status.FAILED, AgentTask.Status.EXPIRED])
        return queryset


@admin.register(AgentTask)
class AgentTaskAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "agent",
        "actions_text",
        "state",
        "progress",
        "manifest_version",
        "push_attempts",
        "last_push_error_short",
        "created_at",
        "expires_at",
    ]
    list_filter = [StuckFilter, "status", "agent"]
    search_fields = ["public_id", "agent__name", "last_push_error", "error_message"]
    list_select_related = ["agent", "manifest_version__manifest"]
    inlines = [AgentTaskEventInline]
    actions = ["push_now"]
    fields = [
        "public_id",
        "agent",
        "actions_text",
        "state",
        "progress",
        "manifest_version",
        "expires_at",
        "push_attempts",
        "push_failures",
        "last_push_at",
        "last_push_error",
        "next_push_at",
        "accepted_at",
        "started_at",
        "finished_at",
        "error_code",
        "error_message",
        "result_pretty",
        "created_by",
        "created_at",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False  # created with the agent's "Push a sync task"

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)  # actions on the list only

    @admin.display(description="actions")
    def actions_text(self, obj):
        return ", ".join(obj.actions)

    @admin.display(description="status", ordering="status")
    def state(self, obj):
        return badge(obj.status)

    @admin.display(description="last push error")
    def last_push_error_short(self, obj):
        text = obj.last_push_error
        if not text:
            return "—"
        return format_html(
            '<span title="{}">{}</span>', text, text[:80] + ("…" if len(text) > 80 else "")
        )

    @admin.display(description="result")
    def result_pretty(self, obj):
        if obj.result is None:
            return "—"
        return format_html(
            '<pre style="max-height:24em;overflow:auto;margin:0">{}</pre>', pretty(obj.result)
        )

    @admin.action(description="Push the selected pending tasks now")
    def push_now(self, request, queryset):
        for task in queryset.filter(status=AgentTask.Status.PENDING):
            task = agent_task_push_now(task=task)
            level = (
                messages.SUCCESS if task.status == AgentTask.Status.RUNNING else messages.WARNING
            )
            text = f"{task.public_id}: {task.status}"
            if task.last_push_error:
                text += f" — {task.last_push_error}"
            self.message_user(request, text, level)
        skipped = queryset.exclude(status=AgentTask.Status.PENDING).count()
        if skipped:
            self.message_user(
                request, f"Skipped {skipped} task(s) that are not pending.", messages.WARNING
            )


# ============================================================================== alerts


class AcknowledgedFilter(admin.SimpleListFilter):
    title = "acknowledged"
    parameter_name = "acknowledged"

    def lookups(self, request, model_admin):
        return [("no", "Not acknowledged"), ("yes", "Acknowledged")]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(acknowledged_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(acknowledged_at__isnull=False)
        return queryset


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "agent",
        "level",
        "type",
        "source",
        "message_short",
        "acknowledged",
    ]
    list_filter = [AcknowledgedFilter, "severity", "type", "source", "agent"]
    search_fields = ["agent__name", "type", "message", "public_id"]
    list_select_related = ["agent", "acknowledged_by"]
    actions = ["acknowledge"]
    fields = [
        "public_id",
        "agent",
        "source",
        "type",
        "level",
        "message",
        "payload_pretty",
        "created_at",
        "acknowledged_at",
        "acknowledged_by",
    ]
    readonly_fields = fields
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)

    @admin.display(description="severity", ordering="severity")
    def level(self, obj):
        return badge(obj.severity)

    @admin.display(description="message")
    def message_short(self, obj):
        return obj.message if len(obj.message) <= 100 else obj.message[:98] + "…"

    @admin.display(description="acknowledged", boolean=True)
    def acknowledged(self, obj):
        return obj.acknowledged_at is not None

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return (
            format_html('<pre style="margin:0">{}</pre>', pretty(obj.payload))
            if obj.payload
            else "—"
        )

    @admin.action(description="Acknowledge the selected alerts")
    def acknowledge(self, request, queryset):
        count = 0
        for alert in queryset.filter(acknowledged_at__isnull=True):
            alert_acknowledge(alert=alert, user=request.user)
            count += 1
        self.message_user(request, f"Acknowledged {count} alert(s).")


__all__ = ["AgentAdmin", "AgentTaskAdmin", "AlertAdmin", "ManifestAdmin", "ManifestVersionAdmin"]
