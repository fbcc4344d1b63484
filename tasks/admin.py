"""The task console: what is stuck, what fails, where it ran; cancel and retry; ability stats."""

from __future__ import annotations

import json
from datetime import timedelta

from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from integrations.admin import WorkflowBindingAdmin as CatalogWorkflowBindingAdmin
from integrations.models import WorkflowBinding
from podi.admin_helpers import ServiceAdminMixin
from podi.errors import AppError
from podi.realtime.selectors import task_events
from tasks.models import (
    AbilityInvocationLog,
    Task,
    TaskAsset,
    TaskBatch,
    TaskStatus,
    TaskTemplate,
)
from tasks.selectors import ability_invocation_stats
from tasks.services import (
    TEMPLATE_FIELDS,
    task_cancel,
    task_retry,
    task_submit,
    template_create,
    template_delete,
    template_update,
)

EVENTS_SHOWN = 200  # on the task change page; the full log is under Live events › Events

STATUS_COLOURS = {
    TaskStatus.QUEUED: "#666",
    TaskStatus.RUNNING: "#0a6ebd",
    TaskStatus.SUCCEEDED: "#218838",
    TaskStatus.FAILED: "#c82333",
    TaskStatus.CANCELED: "#a0a0a0",
}


class StuckFilter(admin.SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [
            ("stuck", "Stuck (past deadline or silent worker)"),
            ("failed_hour", "Failed in the last hour"),
            ("failing", "Failed in the last 24 h"),
            ("succeeded_recent", "Succeeded in the last 5 minutes"),
            ("retried", "Needed more than one attempt"),
        ]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "stuck":
            return (
                queryset.filter(status=TaskStatus.QUEUED, queue_deadline__lt=now)
                | queryset.filter(
                    status=TaskStatus.RUNNING, heartbeat_at__lt=now - timedelta(seconds=60)
                )
                | queryset.filter(status=TaskStatus.RUNNING, run_deadline__lt=now)
            )
        if self.value() == "failed_hour":
            return queryset.filter(
                status=TaskStatus.FAILED, finished_at__gte=now - timedelta(hours=1)
            )
        if self.value() == "succeeded_recent":
            return queryset.filter(
                status=TaskStatus.SUCCEEDED, finished_at__gte=now - timedelta(minutes=5)
            )
        if self.value() == "failing":
            return queryset.filter(
                status=TaskStatus.FAILED, finished_at__gte=now - timedelta(days=1)
            )
        if self.value() == "retried":
            return queryset.filter(attempts__gt=1)
        return queryset


class TaskAssetInline(admin.TabularInline):
    model = TaskAsset
    fields = ["kind", "object_key", "mime_type", "size", "width", "height", "node_id"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "action",
        "user",
        "status_badge",
        "progress",
        "executor",
        "attempts",
        "points",
        "created_at",
        "duration",
    ]
    list_filter = [StuckFilter, "status", "executor", "action", "created_at"]
    search_fields = ["public_id", "client_ref", "external_id", "user__username", "action"]
    list_select_related = ["user", "executor"]
    date_hierarchy = "created_at"
    inlines = [TaskAssetInline]
    actions = ["cancel_tasks", "retry_tasks"]
    readonly_fields = [*(f.name for f in Task._meta.fields), "events"]
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="status", ordering="status")
    def status_badge(self, task: Task):
        text = task.status
        if task.error_code:
            text = f"{task.status} · {task.error_code}"
        return format_html(
            '<span style="color:{};font-weight:600">{}</span>', STATUS_COLOURS[task.status], text
        )

    @admin.display(description="events")
    def events(self, task: Task):
        """The task's events in its owner's stream (the log itself is in Live events)."""
        rows = task_events(user_id=task.user_id, task_id=task.public_id, limit=EVENTS_SHOWN)
        if not rows:
            return "—"
        return format_html(
            "<table><tr><th>seq</th><th>type</th><th>payload</th><th>time</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                (
                    (row["seq"], row["type"], json.dumps(row["payload"]), row["timestamp"])
                    for row in rows
                ),
            ),
        )

    @admin.display(description="duration")
    def duration(self, task: Task):
        seconds = task.duration_seconds
        return "—" if seconds is None else f"{seconds:.1f} s"

    @admin.action(description="Cancel selected tasks (releases their points)")
    def cancel_tasks(self, request, queryset):
        done = skipped = 0
        for task in queryset:
            try:
                with transaction.atomic():
                    task_cancel(task=task)
                done += 1
            except AppError:
                skipped += 1
        self.message_user(request, f"Canceled {done} task(s); {skipped} already finished.")

    @admin.action(description="Retry selected failed/canceled tasks")
    def retry_tasks(self, request, queryset):
        created = []
        for task in queryset:
            try:
                with transaction.atomic():
                    created.append(task_retry(task=task).public_id)
            except AppError as exc:
                self.message_user(request, f"{task.public_id}: {exc.message}", messages.WARNING)
        if created:
            self.message_user(request, f"Queued {len(created)} retry task(s): {', '.join(created)}")


@admin.register(TaskBatch)
class TaskBatchAdmin(admin.ModelAdmin):
    list_display = ["public_id", "action", "user", "points", "created_at"]
    search_fields = ["public_id", "user__username", "action"]
    list_select_related = ["user"]
    readonly_fields = [
        "public_id",
        "user",
        "action",
        "template",
        "points",
        "callback_url",
        "created_at",
    ]

    def has_add_permission(self, request):
        return False


@admin.register(TaskTemplate)
class TaskTemplateAdmin(ServiceAdminMixin, admin.ModelAdmin):
    create_service = template_create
    update_service = template_update
    delete_service = template_delete
    service_arg = "template"
    service_fields = TEMPLATE_FIELDS
    list_display = ["name", "public_id", "ability", "item_count", "enabled"]
    list_filter = ["enabled", "ability"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id"]

    @admin.display(description="items")
    def item_count(self, template: TaskTemplate) -> int:
        return len(template.items or [])


@admin.register(AbilityInvocationLog)
class AbilityInvocationLogAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.is_staff

    def changelist_view(self, request, extra_context=None):
        try:
            days = max(1, min(int(request.GET.get("days", 7)), 365))
        except ValueError:
            days = 7
        context = {
            **self.admin_site.each_context(request),
            "title": f"Ability invocations, last {days} days",
            "rows": ability_invocation_stats(since=timezone.now() - timedelta(days=days)),
            "days": days,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/tasks/ability_stats.html", context)


# The binding console of integrations, plus "Submit a test task": a real task, so it lives here.
admin.site.unregister(WorkflowBinding)


@admin.register(WorkflowBinding)
class WorkflowBindingAdmin(CatalogWorkflowBindingAdmin):
    can_submit_test_task = True

    def submit_test_task(self, request, binding: WorkflowBinding, form):
        """Submit a real, free task pinned to this binding and open it in the task console."""
        preset = form.cleaned_data.get("preset")
        with transaction.atomic():
            task = task_submit(
                user=request.user,
                action=binding.ability.code,
                params=form.cleaned_data.get("params") or {},
                preset=preset.name if preset else None,
                client_ref=f"test-run:binding:{binding.pk}",
                test_binding=binding,
            )
        self.message_user(
            request,
            f"Submitted test task {task.public_id} on {binding.executor} (free of charge).",
        )
        return HttpResponseRedirect(reverse("admin:tasks_task_change", args=[task.pk]))
