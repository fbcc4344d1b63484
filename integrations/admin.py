"""The operator console for the integrations catalog.

Every write goes through ``integrations.services``; forms run the same validation first so an
operator sees the reason next to the field instead of an error page.
"""

from __future__ import annotations

import difflib
import json
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, F, OuterRef, Q
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from integrations.models import (
    Ability,
    Executor,
    HealthStatus,
    Preset,
    VendorApiKey,
    Workflow,
    WorkflowBinding,
    WorkflowVersion,
)
from integrations.selectors import (
    ability_params_schema,
    ability_schema_version,
    binding_preview,
    binding_warnings,
    bindings_not_runnable,
    params_validate,
    workflow_version_warnings,
)
from integrations.services import (
    ability_create,
    ability_delete,
    ability_update,
    api_key_create,
    api_key_delete,
    api_key_update,
    binding_check,
    binding_create,
    binding_delete,
    binding_update,
    executor_create,
    executor_delete,
    executor_health_check,
    executor_update,
    preset_create,
    preset_delete,
    preset_update,
    workflow_create,
    workflow_delete,
    workflow_update,
    workflow_version_activate,
    workflow_version_create,
)
from integrations.validation import (
    check_http_url,
    clean_definition,
    clean_executor_config,
    clean_outputs,
    clean_params_schema,
    config_for_display,
    config_keep_masked,
    config_unsealed,
)
from podi.admin_helpers import (
    PrettyJSONField,
    ServiceAdminMixin,
    app_error_text,
    as_form_error,
    form_add_app_error,
    pretty,
)
from podi.errors import AppError

NEAR_QUOTA_RATIO = 0.8
MAX_IMPORT_BYTES = 5 * 1024 * 1024  # an API-format workflow file imported in the console
EXPIRING_DAYS = 7
COLOURS = {
    HealthStatus.HEALTHY: "#1a7f37",
    HealthStatus.UNHEALTHY: "#cf222e",
    HealthStatus.UNKNOWN: "#9a6700",
}


def json_block(value):
    return format_html(
        '<pre style="max-height:32em;overflow:auto;white-space:pre-wrap;margin:0">{}</pre>',
        pretty(value),
    )


def warn(model_admin, request, warnings: list[str]) -> None:
    """Show each warning of a save (e.g. missing node classes) as an admin warning message."""
    for text in warnings:
        model_admin.message_user(request, text, messages.WARNING)


def health_badge(executor: Executor):
    colour = COLOURS.get(executor.health_status, "#666")
    when = f"{timesince(executor.health_checked_at)} ago" if executor.health_checked_at else "never"
    return format_html(
        '<span style="color:#fff;background:{};padding:1px 7px;border-radius:8px">{}</span>'
        ' <small style="color:#666">{}</small>',
        colour,
        executor.health_status,
        when,
    )


# ============================================================================== executors


class ExecutorForm(forms.ModelForm):
    config = PrettyJSONField(
        required=False,
        initial=dict,
        help_text=(
            "Per kind. All: connect_timeout, read_timeout (s), headers {name: value}, "
            "health_url. ComfyUI: api_prefix (default /api). Coze: base_url, mode "
            "(sync|async|stream), poll_interval, bot_id, app_id, health_probe. HTTP: "
            "auth_header, auth_scheme, result_path, poll {url, interval, max_polls, status_path, "
            "success_values, failure_values, result_path}. Put secrets in vendor API keys."
        ),
    )

    class Meta:
        model = Executor
        fields = [
            "name",
            "kind",
            "base_url",
            "enabled",
            "max_concurrency",
            "weight",
            "config",
            "api_keys",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # What is stored, before the form writes posted values onto the instance.
        self.instance_config = config_unsealed(self.instance.config)
        self.instance_kind = self.instance.kind
        if self.instance.pk and not self.is_bound:
            self.initial["config"] = config_for_display(self.instance.config)

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        if not kind:
            return data
        try:
            if data.get("base_url"):
                data["base_url"] = check_http_url(data["base_url"], "base_url")
            config = data.get("config") or {}
            if self.instance.pk:
                config = config_keep_masked(self.instance_config, config)
            data["config"] = clean_executor_config(kind, config)  # sealed by the service
        except AppError as exc:
            form_add_app_error(self, exc)  # base_url at its field, config.* at the config box
            return data
        if self.instance.pk and kind != self.instance_kind and self.instance.bindings.exists():
            self.add_error("kind", "Cannot change the kind of an executor with bindings.")
        return data


class HealthFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(self, request, model_admin):
        return [
            ("unhealthy", "Unhealthy"),
            ("healthy", "Healthy"),
            ("unknown", "Unknown"),
            ("stale", "Not checked recently"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "stale":
            cutoff = timezone.now() - timedelta(seconds=3 * settings.EXECUTOR_HEALTH_INTERVAL)
            return queryset.filter(
                Q(health_checked_at__isnull=True) | Q(health_checked_at__lt=cutoff)
            )
        if value in HealthStatus.values:
            return queryset.filter(health_status=value)
        return queryset


class BindingForExecutorInline(admin.TabularInline):
    model = WorkflowBinding
    fk_name = "executor"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["ability", "workflow", "workflow_version", "priority", "weight", "enabled"]
    readonly_fields = fields
    verbose_name_plural = "bindings using this executor"

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Executor)
class ExecutorAdmin(ServiceAdminMixin, admin.ModelAdmin):
    form = ExecutorForm
    create_service = executor_create
    update_service = executor_update
    delete_service = executor_delete
    # api_keys (many-to-many) is saved by the form after the row.
    service_fields = ["name", "kind", "base_url", "enabled", "max_concurrency", "weight", "config"]
    # Explicit: their list querysets are grouped (counts), which drops the model's ordering.
    ordering = ["name", "id"]
    list_display = [
        "name",
        "kind",
        "enabled",
        "health",
        "last_error",
        "in_flight",
        "max_concurrency",
        "weight",
        "binding_count",
        "key_count",
    ]
    list_filter = [HealthFilter, "enabled", "kind"]
    search_fields = ["name", "base_url", "health_error"]
    actions = ["check_now", "enable", "disable"]
    filter_horizontal = ["api_keys"]
    inlines = [BindingForExecutorInline]
    readonly_fields = [
        "health",
        "health_checked_at",
        "health_error",
        "health_details_pretty",
        "in_flight",
    ]
    fieldsets = [
        (None, {"fields": ["name", "kind", "base_url", "enabled"]}),
        ("Capacity", {"fields": ["max_concurrency", "in_flight", "weight"]}),
        ("Settings", {"fields": ["config", "api_keys"]}),
        (
            "Health",
            {
                "fields": [
                    "health",
                    "health_checked_at",
                    "health_error",
                    "health_details_pretty",
                ]
            },
        ),
    ]
    change_form_template = "admin/integrations/executor/change_form.html"

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_bindings=Count("bindings", distinct=True),
                n_keys=Count("api_keys", distinct=True),
            )
        )

    @admin.display(description="health", ordering="health_status")
    def health(self, obj):
        return health_badge(obj)

    @admin.display(description="last error")
    def last_error(self, obj):
        if not obj.health_error:
            return "—"
        text = obj.health_error if len(obj.health_error) <= 90 else obj.health_error[:88] + "…"
        return format_html(
            '<span title="{}" style="color:#cf222e">{}</span>', obj.health_error, text
        )

    @admin.display(description="bindings", ordering="n_bindings")
    def binding_count(self, obj):
        return obj.n_bindings

    @admin.display(description="keys", ordering="n_keys")
    def key_count(self, obj):
        return obj.n_keys

    @admin.display(description="health details")
    def health_details_pretty(self, obj):
        return json_block(obj.health_details) if obj.health_details else "—"

    def _check(self, request, executors) -> None:
        for executor in executors:
            executor = executor_health_check(executor=executor)
            level = {
                HealthStatus.HEALTHY: messages.SUCCESS,
                HealthStatus.UNHEALTHY: messages.ERROR,
            }.get(executor.health_status, messages.WARNING)
            text = f"{executor.name}: {executor.health_status}"
            if executor.health_error:
                text += f": {executor.health_error}"
            self.message_user(request, text, level)

    @admin.action(description="Check health now")
    def check_now(self, request, queryset):
        self._check(request, list(queryset))

    @admin.action(description="Enable selected executors")
    def enable(self, request, queryset):
        for executor in queryset:
            executor_update(executor=executor, enabled=True)
        self.message_user(request, f"Enabled {queryset.count()} executor(s).")

    @admin.action(description="Disable selected executors (no new dispatch)")
    def disable(self, request, queryset):
        for executor in queryset:
            executor_update(executor=executor, enabled=False)
        self.message_user(request, f"Disabled {queryset.count()} executor(s).")

    def get_urls(self):
        return [
            path(
                "<int:object_id>/check/",
                self.admin_site.admin_view(self.check_view),
                name="integrations_executor_check",
            ),
            *super().get_urls(),
        ]

    def check_view(self, request, object_id: int):
        executor = get_object_or_404(Executor, pk=object_id)
        if not self.has_change_permission(request, executor):
            return HttpResponseRedirect(reverse("admin:index"))
        if request.method == "POST":
            self._check(request, [executor])
        return HttpResponseRedirect(
            reverse("admin:integrations_executor_change", args=[executor.pk])
        )


# ============================================================================== vendor keys


class VendorApiKeyForm(forms.ModelForm):
    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: stored encrypted, never shown again. Leave empty to keep it.",
    )

    class Meta:
        model = VendorApiKey
        fields = ["provider", "name", "secret", "status", "priority", "daily_quota", "expires_at"]

    def clean(self):
        data = super().clean()
        if not self.instance.pk and not data.get("secret"):
            self.add_error("secret", "Required for a new key.")
        return data


class NearQuotaFilter(admin.SimpleListFilter):
    title = "quota"
    parameter_name = "quota"

    def lookups(self, request, model_admin):
        return [
            ("near", f"Near quota today (≥ {int(NEAR_QUOTA_RATIO * 100)} %)"),
            ("exhausted", "Exhausted today"),
        ]

    def queryset(self, request, queryset):
        today = timezone.now().date()
        with_quota = queryset.filter(daily_quota__isnull=False, daily_quota__gt=0, usage_date=today)
        if self.value() == "near":
            return with_quota.filter(used_today__gte=F("daily_quota") * NEAR_QUOTA_RATIO)
        if self.value() == "exhausted":
            return with_quota.filter(used_today__gte=F("daily_quota"))
        return queryset


class ExpiryFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiry"

    def lookups(self, request, model_admin):
        return [("soon", f"Expiring in {EXPIRING_DAYS} days"), ("expired", "Expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "soon":
            return queryset.filter(
                expires_at__gt=now, expires_at__lte=now + timedelta(days=EXPIRING_DAYS)
            )
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        return queryset


@admin.register(VendorApiKey)
class VendorApiKeyAdmin(ServiceAdminMixin, admin.ModelAdmin):
    form = VendorApiKeyForm
    create_service = api_key_create
    update_service = api_key_update
    delete_service = api_key_delete
    service_arg = "key"
    service_fields = ["provider", "name", "status", "priority", "daily_quota", "expires_at"]
    list_display = [
        "name",
        "provider",
        "masked_secret",
        "status",
        "priority",
        "usage",
        "expiry",
        "executor_names",
    ]
    list_filter = [NearQuotaFilter, ExpiryFilter, "status", "provider"]
    search_fields = ["name", "provider", "secret_hint", "executors__name"]
    readonly_fields = ["masked_secret", "usage", "last_used_at", "created_at", "updated_at"]
    actions = ["enable", "disable"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("executors")

    def get_fields(self, request, obj=None):
        fields = ["provider", "name", "secret", "status", "priority", "daily_quota", "expires_at"]
        return fields if obj is None else ["masked_secret", *fields, *self.readonly_fields[1:]]

    @admin.display(description="secret")
    def masked_secret(self, obj):
        return format_html("<code>{}</code>", obj.masked)

    @admin.display(description="used today")
    def usage(self, obj):
        used = obj.usage_on(timezone.now().date())
        if obj.daily_quota is None:
            return f"{used} / ∞"
        ratio = used / obj.daily_quota if obj.daily_quota else 1.0
        colour = "#cf222e" if ratio >= 1 else "#9a6700" if ratio >= NEAR_QUOTA_RATIO else "#1a7f37"
        return format_html(
            '<span style="color:{}">{} / {} ({}%)</span>',
            colour,
            used,
            obj.daily_quota,
            int(ratio * 100),
        )

    @admin.display(description="expires", ordering="expires_at")
    def expiry(self, obj):
        if obj.expires_at is None:
            return "never"
        now = timezone.now()
        if obj.expires_at <= now:
            return format_html(
                '<span style="color:#cf222e">expired {} ago</span>', timesince(obj.expires_at)
            )
        colour = "#9a6700" if obj.expires_at <= now + timedelta(days=EXPIRING_DAYS) else "inherit"
        return format_html(
            '<span style="color:{}">in {}</span>', colour, timesince(now, obj.expires_at)
        )

    @admin.display(description="executors")
    def executor_names(self, obj):
        return ", ".join(e.name for e in obj.executors.all()) or "—"

    def service_values(self, request, form):
        values = super().service_values(request, form)
        if form.cleaned_data.get("secret"):  # blank on change: keep the stored secret
            values["secret"] = form.cleaned_data["secret"]
        return values

    @admin.action(description="Enable selected keys")
    def enable(self, request, queryset):
        for key in queryset:
            api_key_update(key=key, status=VendorApiKey.Status.ACTIVE)
        self.message_user(request, f"Enabled {queryset.count()} key(s).")

    @admin.action(description="Disable selected keys")
    def disable(self, request, queryset):
        for key in queryset:
            api_key_update(key=key, status=VendorApiKey.Status.DISABLED)
        self.message_user(request, f"Disabled {queryset.count()} key(s).")


# ============================================================================== workflows


class WorkflowForm(forms.ModelForm):
    """The workflow plus a JSON editor for its next version (pre-filled with the active one).
    Saving with changed JSON creates a new immutable version; validation errors show here."""

    definition_file = forms.FileField(
        required=False,
        label="Import a JSON file",
        help_text="An API-format workflow file (ComfyUI: Workflow → Export (API)); it replaces "
        "the definition below. At most 5 MB.",
        widget=forms.ClearableFileInput(attrs={"accept": "application/json,.json"}),
    )
    new_definition = PrettyJSONField(
        required=False,
        label="Definition",
        help_text="ComfyUI: API-format JSON (Workflow → Export (API)); Coze: {workflowId, "
        "parameters}; HTTP: {method, path, headers, query, body}. String values may hold "
        "{{placeholders}}; {{podi.taskId}}, {{podi.callbackUrl}}, {{podi.callbackToken}} too.",
    )
    new_params_schema = PrettyJSONField(
        required=False,
        label="Params schema",
        help_text='JSON Schema (Draft 2020-12) of the params. Mark image params "x-podi-media": '
        "true.",
    )
    new_outputs = PrettyJSONField(
        required=False,
        label="Output nodes",
        help_text="ComfyUI: node IDs to collect; [] or empty = all.",
    )
    new_changelog = forms.CharField(
        required=False, label="Changelog", widget=forms.Textarea(attrs={"rows": 2, "cols": 100})
    )
    activate = forms.BooleanField(required=False, initial=True, label="Activate the new version")

    class Meta:
        model = Workflow
        fields = ["name", "kind", "description"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        active = self.instance.active_version if self.instance.pk else None
        if active is not None and not self.is_bound:
            self.initial.update(
                new_definition=active.definition,
                new_params_schema=active.params_schema,
                new_outputs=active.outputs,
            )
        if self.instance.pk and self.instance.versions.exists():
            self.fields["kind"].disabled = True

    def clean_definition_file(self):
        upload = self.cleaned_data.get("definition_file")
        if not upload:
            return None
        if upload.size > MAX_IMPORT_BYTES:
            raise forms.ValidationError("The file is larger than 5 MB.")
        upload.seek(0)  # read again when the form is shown back with a service error
        raw = upload.read()
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = f" at line {exc.lineno}, column {exc.colno}" if hasattr(exc, "lineno") else ""
            raise forms.ValidationError(f"{upload.name} is not valid JSON{line}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError(f"{upload.name} holds no JSON object.")
        return value

    def clean(self):
        data = super().clean()
        self.version_values = None
        if data.get("definition_file") is not None:
            data["new_definition"] = data["definition_file"]
        definition = data.get("new_definition")
        if definition in (None, "") or self.errors:
            return data
        kind = data.get("kind") or self.instance.kind
        active = self.instance.active_version if self.instance.pk else None
        outputs = data.get("new_outputs")
        schema = data.get("new_params_schema")
        if active is not None and (
            definition == active.definition
            and (schema or {}) == (active.params_schema or {})
            and (outputs or []) == (active.outputs or [])
        ):
            return data  # nothing changed: no new version
        field = "new_params_schema"
        try:
            schema = clean_params_schema(schema)
            field = "definition_file" if data.get("definition_file") else "new_definition"
            definition = clean_definition(kind, definition, schema)
            field = "new_outputs"
            outputs = clean_outputs(kind, definition, outputs)
        except AppError as exc:
            form_add_app_error(self, exc, field=field)  # once, at the box it is about
            return data
        self.version_values = {
            "definition": definition,
            "params_schema": schema,
            "outputs": outputs,
        }
        return data


class WorkflowVersionInline(admin.TabularInline):
    model = WorkflowVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["version", "is_active", "changelog", "created_at", "created_by", "diff_link"]
    readonly_fields = fields
    verbose_name_plural = "version history"
    ordering = ["-version"]

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="active")
    def is_active(self, obj):
        return "✔" if obj.workflow.active_version_id == obj.pk else ""

    @admin.display(description="diff")
    def diff_link(self, obj):
        if obj.version <= 1:
            return "—"
        url = reverse("admin:integrations_workflowversion_change", args=[obj.pk])
        return format_html('<a href="{}#diff">diff with v{}</a>', url, obj.version - 1)


class WorkflowHasActiveFilter(admin.SimpleListFilter):
    title = "active version"
    parameter_name = "has_active"

    def lookups(self, request, model_admin):
        return [("no", "No version yet"), ("yes", "Has an active version")]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(active_version__isnull=True)
        if self.value() == "yes":
            return queryset.filter(active_version__isnull=False)
        return queryset


@admin.register(Workflow)
class WorkflowAdmin(ServiceAdminMixin, admin.ModelAdmin):
    create_service = workflow_create
    update_service = workflow_update
    delete_service = workflow_delete
    service_fields = ["name", "kind", "description"]
    service_error_aliases = {
        "definition": "new_definition",
        "params_schema": "new_params_schema",
        "outputs": "new_outputs",
    }
    service_error_field = "new_definition"
    form = WorkflowForm
    # Explicit: their list querysets are grouped (counts), which drops the model's ordering.
    ordering = ["name", "id"]
    list_display = ["name", "kind", "active", "version_count", "binding_count", "updated_at"]
    list_filter = ["kind", WorkflowHasActiveFilter]
    search_fields = ["name", "description"]
    inlines = [WorkflowVersionInline]
    fieldsets = [
        (None, {"fields": ["name", "kind", "description"]}),
        (
            "Next version (JSON editor — saving changed JSON creates a new immutable version)",
            {
                "fields": [
                    "definition_file",
                    "new_definition",
                    "new_params_schema",
                    "new_outputs",
                    "new_changelog",
                    "activate",
                ]
            },
        ),
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("active_version")
            .annotate(
                n_versions=Count("versions", distinct=True),
                n_bindings=Count("bindings", distinct=True),
            )
        )

    @admin.display(description="active version", ordering="active_version__version")
    def active(self, obj):
        return f"v{obj.active_version.version}" if obj.active_version else "—"

    @admin.display(description="versions", ordering="n_versions")
    def version_count(self, obj):
        return obj.n_versions

    @admin.display(description="bindings", ordering="n_bindings")
    def binding_count(self, obj):
        return obj.n_bindings

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if form.version_values:
            version = workflow_version_create(
                workflow=Workflow.objects.get(pk=obj.pk),
                changelog=form.cleaned_data.get("new_changelog") or "",
                activate=bool(form.cleaned_data.get("activate")),
                created_by=request.user,
                **form.version_values,
            )
            self.message_user(request, f"Created version {version.version}.", messages.SUCCESS)
            warn(self, request, workflow_version_warnings(version))
            obj.refresh_from_db()


def version_diff(old: WorkflowVersion | None, new: WorkflowVersion):
    """A unified diff of two versions' pretty-printed JSON, coloured, escaped."""
    if old is None:
        return "—"
    # Sorted keys: PostgreSQL's jsonb does not keep key order, and a diff must not show noise.
    before = pretty(
        {"definition": old.definition, "paramsSchema": old.params_schema, "outputs": old.outputs},
        sort_keys=True,
    ).splitlines()
    after = pretty(
        {"definition": new.definition, "paramsSchema": new.params_schema, "outputs": new.outputs},
        sort_keys=True,
    ).splitlines()
    lines = list(
        difflib.unified_diff(before, after, f"v{old.version}", f"v{new.version}", lineterm="", n=3)
    )
    if not lines:
        return "No difference."
    styles = {"+": "background:#e6ffec", "-": "background:#ffebe9", "@": "color:#8250df"}
    body = format_html_join(
        "\n",
        '<span style="{}">{}</span>',
        ((styles.get(line[:1], ""), line) for line in lines),
    )
    return format_html(
        '<pre id="diff" style="max-height:40em;overflow:auto;margin:0">{}</pre>', body
    )


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "workflow",
        "version",
        "is_active",
        "changelog",
        "created_at",
        "created_by",
    ]
    list_filter = ["workflow__kind", "workflow"]
    search_fields = ["workflow__name", "changelog"]
    list_select_related = ["workflow", "created_by"]
    fields = [
        "workflow",
        "version",
        "is_active",
        "changelog",
        "created_at",
        "created_by",
        "definition_pretty",
        "schema_pretty",
        "outputs",
        "diff_with_previous",
    ]
    readonly_fields = fields
    actions = ["activate"]
    change_form_template = "admin/integrations/workflowversion/change_form.html"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="active", boolean=True)
    def is_active(self, obj):
        return obj.workflow.active_version_id == obj.pk

    @admin.display(description="definition")
    def definition_pretty(self, obj):
        return json_block(obj.definition)

    @admin.display(description="params schema")
    def schema_pretty(self, obj):
        return json_block(obj.params_schema)

    @admin.display(description="diff with the previous version")
    def diff_with_previous(self, obj):
        previous = (
            obj.workflow.versions.filter(version__lt=obj.version).order_by("-version").first()
        )
        return version_diff(previous, obj)

    def has_activate_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("integrations.change_workflow")

    def _activate(self, request, version: WorkflowVersion) -> None:
        workflow_version_activate(version=version)
        self.message_user(request, f"{version.workflow.name}: v{version.version} is active.")
        warn(self, request, workflow_version_warnings(version))

    @admin.action(
        description="Make this the active version of its workflow", permissions=["activate"]
    )
    def activate(self, request, queryset):
        for version in queryset.select_related("workflow"):
            self._activate(request, version)

    def get_urls(self):
        return [
            path(
                "<int:object_id>/activate/",
                self.admin_site.admin_view(self.activate_view),
                name="integrations_workflowversion_activate",
            ),
            *super().get_urls(),
        ]

    def activate_view(self, request, object_id: int):
        """The version page's Activate button (POST only; CSRF by the admin)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        version = get_object_or_404(
            WorkflowVersion.objects.select_related("workflow"), pk=object_id
        )
        if not self.has_activate_permission(request, version):
            raise PermissionDenied
        try:
            self._activate(request, version)
        except AppError as exc:
            self.message_user(request, " ".join(app_error_text(exc)), messages.ERROR)
        return HttpResponseRedirect(
            reverse("admin:integrations_workflowversion_change", args=[version.pk])
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = self.get_object(request, object_id)
        extra = {}
        if version is not None:
            extra = {
                "can_activate": self.has_activate_permission(request, version)
                and version.workflow.active_version_id != version.pk,
            }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})


# ============================================================================== abilities


class BindingForm(forms.ModelForm):
    class Meta:
        model = WorkflowBinding
        fields = [
            "ability",
            "workflow",
            "workflow_version",
            "executor",
            "priority",
            "weight",
            "enabled",
            "max_attempts",
            "queue_timeout",
            "run_timeout",
        ]

    def clean(self):
        data = super().clean()
        workflow, executor = data.get("workflow"), data.get("executor")
        if workflow and executor:
            try:
                binding_check(
                    workflow=workflow,
                    executor=executor,
                    workflow_version=data.get("workflow_version"),
                )
            except AppError as exc:
                if "executorKind" in exc.details:
                    field = "executor"
                elif data.get("workflow_version"):
                    field = "workflow_version"
                else:
                    field = "workflow"
                form_add_app_error(self, exc, field=field)
        return data


def _binding_values(form) -> dict:
    return {
        name: form.cleaned_data[name]
        for name in BindingForm.Meta.fields
        if name in form.cleaned_data
    }


class BindingInline(admin.TabularInline):
    model = WorkflowBinding
    form = BindingForm
    fk_name = "ability"
    extra = 0
    fields = [
        "workflow",
        "workflow_version",
        "executor",
        "executor_health",
        "priority",
        "weight",
        "enabled",
        "max_attempts",
        "queue_timeout",
        "run_timeout",
    ]
    readonly_fields = ["executor_health"]
    autocomplete_fields = ["workflow", "executor"]
    show_change_link = True

    @admin.display(description="health")
    def executor_health(self, obj):
        return health_badge(obj.executor) if obj.pk else "—"


class PresetInlineFormSet(BaseInlineFormSet):
    def clean(self):
        super().clean()
        for form in self.forms:
            if form.cleaned_data.get("DELETE") and form.instance.is_base:
                raise forms.ValidationError("The base preset cannot be deleted.")


class PresetForm(forms.ModelForm):
    params = PrettyJSONField(required=False, initial=dict)

    class Meta:
        model = Preset
        fields = ["ability", "name", "params"]

    def clean(self):
        data = super().clean()
        ability = data.get("ability") or getattr(self.instance, "ability", None)
        params = data.get("params") or {}
        if not isinstance(params, dict):
            self.add_error("params", "Must be a JSON object.")
            return data
        if ability is not None and ability.pk:
            schema = ability_params_schema(ability)
            if schema.get("properties"):
                try:
                    params_validate(schema=schema, params=params, partial=True)
                except AppError as exc:
                    form_add_app_error(self, exc, field="params")
        data["params"] = params
        return data


class PresetInline(admin.TabularInline):
    model = Preset
    form = PresetForm
    formset = PresetInlineFormSet
    extra = 0
    fields = ["name", "params", "is_base"]
    readonly_fields = ["is_base"]
    show_change_link = True


class BindingStateFilter(admin.SimpleListFilter):
    title = "bindings"
    parameter_name = "bindings"

    def lookups(self, request, model_admin):
        return [
            ("none", "No enabled binding"),
            ("ok", "Has an enabled binding"),
            ("unhealthy", "Only unhealthy executors"),
        ]

    def queryset(self, request, queryset):
        usable = WorkflowBinding.objects.filter(
            ability=OuterRef("pk"), enabled=True, executor__enabled=True
        )
        if self.value() == "none":
            return queryset.filter(~Exists(usable))
        if self.value() == "ok":
            return queryset.filter(Exists(usable))
        if self.value() == "unhealthy":
            healthy = usable.exclude(executor__health_status=HealthStatus.UNHEALTHY)
            return queryset.filter(Exists(usable), ~Exists(healthy))
        return queryset


class AbilityForm(forms.ModelForm):
    defaults = PrettyJSONField(required=False, initial=dict)

    class Meta:
        model = Ability
        fields = [
            "code",
            "display_name",
            "description",
            "category",
            "provider",
            "points",
            "defaults",
            "status",
            "requires_image",
            "max_outputs",
        ]

    def clean_defaults(self):
        value = self.cleaned_data.get("defaults") or {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Must be a JSON object.")
        if self.instance.pk:
            schema = ability_params_schema(self.instance)
            if schema.get("properties"):
                try:
                    params_validate(schema=schema, params=value, partial=True)
                except AppError as exc:
                    raise as_form_error(exc) from None
        return value


@admin.register(Ability)
class AbilityAdmin(ServiceAdminMixin, admin.ModelAdmin):
    create_service = ability_create
    update_service = ability_update
    delete_service = ability_delete
    service_fields = AbilityForm.Meta.fields
    form = AbilityForm
    # Explicit: their list querysets are grouped (counts), which drops the model's ordering.
    ordering = ["code", "id"]
    list_display = [
        "code",
        "display_name",
        "category",
        "provider",
        "points",
        "status",
        "binding_state",
        "requires_image",
    ]
    list_filter = [BindingStateFilter, "status", "category", "provider", "requires_image"]
    search_fields = ["code", "display_name", "description", "category", "provider"]
    inlines = [BindingInline, PresetInline]
    readonly_fields = ["schema_source", "params_schema_pretty", "created_at", "updated_at"]
    actions = ["activate", "deactivate"]
    fieldsets = [
        (None, {"fields": ["code", "display_name", "description", "category", "provider"]}),
        (
            "Pricing and behaviour",
            {"fields": ["points", "status", "requires_image", "max_outputs"]},
        ),
        ("Params", {"fields": ["defaults", "schema_source", "params_schema_pretty"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_bindings=Count("bindings", distinct=True),
                n_usable=Count(
                    "bindings",
                    filter=Q(bindings__enabled=True, bindings__executor__enabled=True),
                    distinct=True,
                ),
            )
        )

    @admin.display(description="bindings", ordering="n_usable")
    def binding_state(self, obj):
        colour = "#cf222e" if obj.n_usable == 0 else "#1a7f37"
        return format_html(
            '<span style="color:{}">{} enabled / {}</span>', colour, obj.n_usable, obj.n_bindings
        )

    @admin.display(description="schema from")
    def schema_source(self, obj):
        version = ability_schema_version(obj) if obj.pk else None
        if version is None:
            return "No binding yet: add one below to give the ability its params."
        url = reverse("admin:integrations_workflowversion_change", args=[version.pk])
        return format_html('<a href="{}">{}</a>', url, str(version))

    @admin.display(description="params schema (read-only, from the bound active version)")
    def params_schema_pretty(self, obj):
        return json_block(ability_params_schema(obj)) if obj.pk else "—"

    def save_formset(self, request, form, formset, change):
        ability = Ability.objects.get(pk=form.instance.pk)
        # What the admin's change message reads (formset.save() is bypassed for services).
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        if formset.model is WorkflowBinding:
            for sub in formset.forms:
                if not sub.has_changed() and not sub.cleaned_data.get("DELETE"):
                    continue
                values = _binding_values(sub)
                values["ability"] = ability
                if sub.cleaned_data.get("DELETE"):
                    if sub.instance.pk:
                        binding_delete(binding=sub.instance)
                elif sub.instance.pk:
                    current = WorkflowBinding.objects.get(pk=sub.instance.pk)
                    saved = binding_update(
                        binding=current,
                        **{k: v for k, v in values.items() if k in sub.changed_data},
                    )
                    warn(self, request, binding_warnings(saved))
                else:
                    warn(self, request, binding_warnings(binding_create(**values)))
            return
        if formset.model is Preset:
            for sub in formset.forms:
                if not sub.has_changed() and not sub.cleaned_data.get("DELETE"):
                    continue
                if sub.cleaned_data.get("DELETE"):
                    if sub.instance.pk:
                        preset_delete(preset=sub.instance)
                elif sub.instance.pk:
                    preset_update(
                        preset=Preset.objects.get(pk=sub.instance.pk),
                        **{
                            k: sub.cleaned_data[k]
                            for k in ("name", "params")
                            if k in sub.changed_data
                        },
                    )
                else:
                    preset_create(
                        ability=ability,
                        name=sub.cleaned_data["name"],
                        params=sub.cleaned_data.get("params") or {},
                    )
            return
        super().save_formset(request, form, formset, change)

    @admin.action(description="Activate selected abilities (show in the catalog)")
    def activate(self, request, queryset):
        for ability in queryset:
            ability_update(ability=ability, status=Ability.Status.ACTIVE)
        self.message_user(request, f"Activated {queryset.count()} ability(ies).")

    @admin.action(description="Deactivate selected abilities (hide, refuse new tasks)")
    def deactivate(self, request, queryset):
        for ability in queryset:
            ability_update(ability=ability, status=Ability.Status.INACTIVE)
        self.message_user(request, f"Deactivated {queryset.count()} ability(ies).")


# ============================================================================== bindings


class TestRunForm(forms.Form):
    params = PrettyJSONField(required=False, initial=dict, label="params")
    preset = forms.ModelChoiceField(queryset=Preset.objects.none(), required=False)

    def __init__(self, *args, binding: WorkflowBinding, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["preset"].queryset = binding.ability.presets.all()


class PinnedFilter(admin.SimpleListFilter):
    title = "version"
    parameter_name = "pinned"

    def lookups(self, request, model_admin):
        return [("pinned", "Pinned to a version"), ("active", "Follows the active version")]

    def queryset(self, request, queryset):
        if self.value() == "pinned":
            return queryset.filter(workflow_version__isnull=False)
        if self.value() == "active":
            return queryset.filter(workflow_version__isnull=True)
        return queryset


class RunnableFilter(admin.SimpleListFilter):
    """ "Cannot run": disabled, executor disabled or unhealthy, or node classes missing."""

    title = "can run"
    parameter_name = "runnable"

    def lookups(self, request, model_admin):
        return [("yes", "Can run"), ("no", "Cannot run"), ("nodes", "Missing node classes")]

    def queryset(self, request, queryset):

        if self.value() == "no":
            return queryset.filter(pk__in=bindings_not_runnable().values("pk"))
        if self.value() == "yes":
            return queryset.exclude(pk__in=bindings_not_runnable().values("pk"))
        if self.value() == "nodes":
            return queryset.exclude(missing_node_classes=[])
        return queryset


@admin.register(WorkflowBinding)
class WorkflowBindingAdmin(ServiceAdminMixin, admin.ModelAdmin):
    create_service = binding_create
    update_service = binding_update
    delete_service = binding_delete
    service_arg = "binding"
    service_fields = BindingForm.Meta.fields
    form = BindingForm
    list_display = [
        "__str__",
        "ability",
        "workflow",
        "version",
        "executor",
        "executor_health",
        "nodes",
        "priority",
        "weight",
        "enabled",
        "max_attempts",
        "queue_timeout",
        "run_timeout",
    ]
    list_filter = [
        RunnableFilter,
        "enabled",
        PinnedFilter,
        "executor__kind",
        "executor__health_status",
        "executor",
    ]
    readonly_fields = ["nodes"]
    search_fields = ["ability__code", "workflow__name", "executor__name"]
    list_select_related = ["ability", "workflow__active_version", "workflow_version", "executor"]
    autocomplete_fields = ["ability", "workflow", "executor"]
    actions = ["test_run", "enable", "disable"]
    change_form_template = "admin/integrations/workflowbinding/change_form.html"

    @admin.display(description="version")
    def version(self, obj):
        if obj.workflow_version_id:
            return f"v{obj.workflow_version.version} (pinned)"
        active = obj.workflow.active_version
        return f"active (v{active.version})" if active else "—"

    @admin.display(description="health", ordering="executor__health_status")
    def executor_health(self, obj):
        return health_badge(obj.executor)

    @admin.display(description="node classes")
    def nodes(self, obj):
        if obj.pk is None or obj.executor.kind != "comfyui":
            return "—"
        if obj.missing_node_classes:
            return format_html(
                '<span style="color:#cf222e" title="dispatch skips this binding">✗ missing {}'
                "</span>",
                ", ".join(obj.missing_node_classes),
            )
        if obj.nodes_checked_at is None:
            return format_html('<span style="color:#9a6700">{}</span>', "not checked yet")
        return format_html('<span style="color:#1a7f37">{}</span>', "✓ all installed")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        warn(self, request, binding_warnings(obj))

    @admin.action(description="Test run: validate and fill the definition now")
    def test_run(self, request, queryset):
        first = queryset.first()
        if queryset.count() > 1:
            self.message_user(
                request, "Test run takes one binding; showing the first.", messages.WARNING
            )
        return HttpResponseRedirect(
            reverse("admin:integrations_workflowbinding_test_run", args=[first.pk])
        )

    @admin.action(description="Enable selected bindings")
    def enable(self, request, queryset):
        for binding in queryset:
            binding_update(binding=binding, enabled=True)
        self.message_user(request, f"Enabled {queryset.count()} binding(s).")

    @admin.action(description="Disable selected bindings")
    def disable(self, request, queryset):
        for binding in queryset:
            binding_update(binding=binding, enabled=False)
        self.message_user(request, f"Disabled {queryset.count()} binding(s).")

    def get_urls(self):
        return [
            path(
                "<int:object_id>/test-run/",
                self.admin_site.admin_view(self.test_run_view),
                name="integrations_workflowbinding_test_run",
            ),
            *super().get_urls(),
        ]

    def test_run_view(self, request, object_id: int):
        binding = get_object_or_404(
            WorkflowBinding.objects.select_related(
                "ability", "workflow__active_version", "workflow_version", "executor"
            ),
            pk=object_id,
        )
        if not self.has_view_permission(request, binding):
            return HttpResponseRedirect(reverse("admin:index"))
        form = TestRunForm(request.POST or None, binding=binding)
        result, errors = None, []
        if request.method == "POST" and form.is_valid():
            try:
                result = binding_preview(
                    binding=binding,
                    params=form.cleaned_data.get("params") or {},
                    preset=form.cleaned_data.get("preset"),
                )
                if "_submit" in request.POST and self.can_submit_test_task:
                    return self.submit_test_task(request, binding, form)
            except AppError as exc:
                errors = app_error_text(exc)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Test run: {binding}",
            "opts": self.model._meta,
            "binding": binding,
            "form": form,
            "errors": errors,
            "result": result,
            "can_submit": self.can_submit_test_task,
            "filled_json": pretty(result["filled"]) if result else "",
            "params_json": pretty(result["params"]) if result else "",
        }
        return TemplateResponse(
            request, "admin/integrations/workflowbinding/test_run.html", context
        )

    # "Submit a test task" runs a real task, which is the tasks app's business: tasks/admin.py
    # (a layer up) re-registers this admin with ``can_submit_test_task`` and the submit.
    can_submit_test_task = False

    def submit_test_task(self, request, binding: WorkflowBinding, form):
        raise NotImplementedError


# ============================================================================== presets


@admin.register(Preset)
class PresetAdmin(ServiceAdminMixin, admin.ModelAdmin):
    create_service = preset_create
    update_service = preset_update
    delete_service = preset_delete
    service_fields = ["ability", "name", "params"]
    form = PresetForm
    list_display = ["name", "ability", "is_base", "params_short", "updated_at"]
    list_filter = ["is_base", "ability"]
    search_fields = ["name", "ability__code", "ability__display_name"]
    list_select_related = ["ability"]
    readonly_fields = ["is_base", "created_at", "updated_at"]

    def get_fields(self, request, obj=None):
        return (
            ["ability", "name", "params"]
            if obj is None
            else ["ability", "name", "params", *self.readonly_fields]
        )

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "ability"] if obj else self.readonly_fields

    @admin.display(description="params")
    def params_short(self, obj):
        text = json.dumps(obj.params, ensure_ascii=False)
        return text if len(text) <= 80 else text[:78] + "…"

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_base:
            return False
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset):
        skipped = queryset.filter(is_base=True).count()
        super().delete_queryset(request, queryset.filter(is_base=False))
        if skipped:
            self.message_user(
                request, f"Kept {skipped} base preset(s): they cannot be deleted.", messages.WARNING
            )
