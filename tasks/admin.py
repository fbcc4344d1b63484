"""The task console: what is stuck, what fails, where it ran; cancel and retry; ability stats."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from integrations.admin import WorkflowBindingAdmin as CatalogWorkflowBindingAdmin
from integrations.models import WorkflowBinding
from media_app.models import MediaObject
from media_app.services import signed_download_url
from podi.admin_helpers import ReadableLabelsMixin, ServiceAdminMixin, app_error_text, pretty
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
from wallet.models import Account, LedgerEntry

SIGNED_URL_TTL = 600  # thumbnails and players on the task page
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


def _link(url: str, text) -> str:
    return format_html('<a href="{}">{}</a>', url, text)


def _change_link(model: str, pk, label) -> str:
    """A link to ``model``'s change page for ``pk`` (``label()`` read only then), or "—"."""
    if pk is None:
        return "—"
    return _link(reverse(f"admin:{model}_change", args=[pk]), label())


def _json_block(value):
    if value in (None, "", [], {}):
        return "—"
    return format_html(
        '<pre class="podi-json" style="max-height:32em;overflow:auto;white-space:pre-wrap;'
        'margin:0">{}</pre>',
        pretty(value),
    )


def _media_player(url: str, mime: str, label: str):
    """An inline preview of one stored object: thumbnail, player, or a link."""
    if mime.startswith("image/"):
        return format_html(
            '<a href="{}" target="_blank" rel="noopener"><img class="podi-thumb" src="{}" alt="{}"'
            ' style="max-width:256px;max-height:256px;border:1px solid #ccc"></a>',
            url,
            url,
            label,
        )
    if mime.startswith("audio/"):
        return format_html(
            '<audio class="podi-audio" controls preload="none" src="{}"></audio>', url
        )
    if mime.startswith("video/"):
        return format_html(
            '<video class="podi-video" controls preload="metadata" src="{}" '
            'style="max-width:360px"></video>',
            url,
        )
    return format_html('<a href="{}" target="_blank" rel="noopener">download</a>', url)


# Keys under which a task's result carries text (Coze answers, HTTP executors' replies).
TEXT_KEYS = ("text", "output", "content", "answer", "message", "data")


def _text_outputs(result) -> list[tuple[str, str]]:
    """The text a task returned: the result itself when a string, else its text-like keys."""
    if isinstance(result, str):
        return [("result", result)] if result else []
    if isinstance(result, dict):
        return [(key, result[key]) for key in TEXT_KEYS if isinstance(result.get(key), str)]
    return []


@admin.register(Task)
class TaskAdmin(ReadableLabelsMixin, admin.ModelAdmin):
    """Read-only (no Save): the task changes only through Cancel and Retry, which call the
    services. Outputs inline, records linked, the page refreshes itself while the task runs."""

    list_display = [
        "public_id",
        "action",
        "user_link",
        "status_badge",
        "progress",
        "executor",
        "attempts",
        "points",
        "hold",
        "created_at",
        "duration",
    ]
    list_filter = [StuckFilter, "status", "executor", "action", "created_at"]
    search_fields = ["public_id", "client_ref", "external_id", "user__username", "action"]
    list_select_related = ["user", "executor"]
    date_hierarchy = "created_at"
    actions = ["cancel_tasks", "retry_tasks"]
    list_per_page = 50
    change_form_template = "admin/tasks/task/change_form.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "public_id",
                    "status_badge",
                    "progress",
                    ("error_code", "error_message"),
                    "user_link",
                    "action",
                    "preset",
                    "executor_link",
                    "binding_link",
                    ("attempts", "max_attempts"),
                    "duration",
                ]
            },
        ),
        ("Outputs", {"fields": ["outputs"]}),
        ("Money", {"fields": ["points", "hold", "account_link", "ledger"]}),
        ("Inputs", {"fields": ["inputs_view", "params_pretty"]}),
        ("Result and executor state", {"fields": ["result_pretty", "executor_state_pretty"]}),
        ("Events", {"fields": ["events"]}),
        (
            "Details",
            {
                "classes": ["collapse"],
                "fields": [
                    "original_task_link",
                    "batch",
                    "client_ref",
                    "external_id",
                    "service_key",
                    "priority",
                    "callback_url",
                    "callback_events",
                    "queue_timeout",
                    "run_timeout",
                    "queue_deadline",
                    "run_deadline",
                    "created_at",
                    "dispatched_at",
                    "started_at",
                    "heartbeat_at",
                    "finished_at",
                    "updated_at",
                ],
            },
        ),
    ]
    readonly_fields = [
        *(f.name for f in Task._meta.fields),
        "status_badge",
        "user_link",
        "executor_link",
        "binding_link",
        "duration",
        "outputs",
        "hold",
        "account_link",
        "ledger",
        "inputs_view",
        "params_pretty",
        "result_pretty",
        "executor_state_pretty",
        "events",
        "original_task_link",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # read-only page: no Save; Cancel and Retry are below

    def has_delete_permission(self, request, obj=None):
        return False

    def has_operate_permission(self, request, obj=None) -> bool:
        """Cancel and retry: operators who may change tasks."""
        return request.user.has_perm("tasks.change_task")

    # --- columns and fields ------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_badge(self, task: Task):
        text = task.status
        if task.error_code:
            text = f"{task.status} · {task.error_code}"
        return format_html(
            '<span class="podi-status" style="color:{};font-weight:600">{}</span>',
            STATUS_COLOURS[task.status],
            text,
        )

    @admin.display(description="user", ordering="user__username")
    def user_link(self, task: Task):
        return _link(reverse("admin:auth_user_change", args=[task.user_id]), task.user)

    @admin.display(description="executor")
    def executor_link(self, task: Task):
        return _change_link("integrations_executor", task.executor_id, lambda: task.executor)

    @admin.display(description="binding")
    def binding_link(self, task: Task):
        return _change_link("integrations_workflowbinding", task.binding_id, lambda: task.binding)

    @admin.display(description="retry of")
    def original_task_link(self, task: Task):
        return _change_link(
            "tasks_task", task.original_task_id, lambda: task.original_task.public_id
        )

    @admin.display(description="hold")
    def hold(self, task: Task):
        if not task.hold_id:
            return "—"
        return _link(reverse("admin:wallet_hold_by_public_id", args=[task.hold_id]), task.hold_id)

    @admin.display(description="account")
    def account_link(self, task: Task):
        account = Account.objects.filter(user_id=task.user_id).first()
        if account is None:
            return "—"
        url = reverse("admin:wallet_account_change", args=[account.pk])
        return format_html(
            '<a href="{}">{}</a> (balance {}, frozen {})',
            url,
            task.user,
            account.balance,
            account.frozen,
        )

    @admin.display(description="ledger entries")
    def ledger(self, task: Task):
        entries = list(
            LedgerEntry.objects.filter(task_id=task.public_id).order_by("created_at", "id")
        )
        if not entries:
            return "—"
        return format_html(
            "<table><tr><th>entry</th><th>type</th><th>points</th><th>balance after</th>"
            "<th>time</th></tr>{}</table>",
            format_html_join(
                "",
                '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
                (
                    (
                        reverse("admin:wallet_ledgerentry_change", args=[entry.pk]),
                        entry.public_id,
                        entry.type,
                        entry.points,
                        entry.balance_after,
                        entry.created_at,
                    )
                    for entry in entries
                ),
            ),
        )

    def _assets(self, task: Task, kind: str):
        assets = [a for a in task.assets.all() if a.kind == kind]
        media = {
            m.object_key: m
            for m in MediaObject.objects.filter(object_key__in=[a.object_key for a in assets])
        }
        rows = []
        for asset in assets:
            try:
                url, _ = signed_download_url(object_key=asset.object_key, ttl=SIGNED_URL_TTL)
                preview = _media_player(url, asset.mime_type or "", asset.object_key)
            except AppError:
                preview = "storage unavailable"
            row = media.get(asset.object_key)
            key = (
                _link(
                    reverse("admin:media_app_mediaobject_change", args=[row.pk]), asset.object_key
                )
                if row is not None
                else asset.object_key
            )
            size = f"{asset.width}×{asset.height}" if asset.width and asset.height else ""
            rows.append((preview, key, asset.mime_type, size))
        return rows

    def _asset_table(self, rows):
        return format_html(
            '<div class="podi-assets" style="display:flex;flex-wrap:wrap;gap:16px">{}</div>',
            format_html_join(
                "",
                '<figure style="margin:0">{}<figcaption><small>{}<br>{} {}</small></figcaption>'
                "</figure>",
                rows,
            ),
        )

    @admin.display(description="outputs")
    def outputs(self, task: Task):
        rows = self._assets(task, TaskAsset.Kind.OUTPUT)
        texts = _text_outputs(task.result)
        if not rows and not texts:
            return "—" if task.is_terminal else "Not yet: the page refreshes while the task runs."
        parts = []
        if rows:
            parts.append(self._asset_table(rows))
        for key, text in texts:
            parts.append(
                format_html(
                    '<div class="podi-text"><b>{}</b><pre style="white-space:pre-wrap;margin:0">{}'
                    "</pre></div>",
                    key,
                    text,
                )
            )
        return format_html_join("", "{}", ((part,) for part in parts))

    @admin.display(description="input files")
    def inputs_view(self, task: Task):
        rows = self._assets(task, TaskAsset.Kind.INPUT)
        if not rows:
            return _json_block(task.inputs)
        return self._asset_table(rows)

    @admin.display(description="params")
    def params_pretty(self, task: Task):
        return _json_block(task.params)

    @admin.display(description="result")
    def result_pretty(self, task: Task):
        return _json_block(task.result)

    @admin.display(description="executor state")
    def executor_state_pretty(self, task: Task):
        return _json_block(task.executor_state)

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
                '<tr><td>{}</td><td>{}</td><td><pre style="margin:0;white-space:pre-wrap">{}</pre>'
                "</td><td>{}</td></tr>",
                (
                    (row["seq"], row["type"], pretty(row["payload"]), row["timestamp"])
                    for row in rows
                ),
            ),
        )

    @admin.display(description="duration")
    def duration(self, task: Task):
        seconds = task.duration_seconds
        return "—" if seconds is None else f"{seconds:.1f} s"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("assets")

    # --- Cancel, Retry, live refresh -----------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "by-id/<str:public_id>/",
                view(self.by_public_id_view),
                name="tasks_task_by_public_id",
            ),
            path("<int:object_id>/cancel/", view(self.cancel_view), name="tasks_task_cancel"),
            path("<int:object_id>/retry/", view(self.retry_view), name="tasks_task_retry"),
            path("<int:object_id>/state.json", view(self.state_view), name="tasks_task_state"),
            *super().get_urls(),
        ]

    def _get_task(self, request, object_id) -> Task:
        task = get_object_or_404(Task, pk=object_id)
        if not self.has_view_permission(request, task):
            raise PermissionDenied
        return task

    def by_public_id_view(self, request, public_id: str):
        """Other pages link a task by its public id (holds, ledger entries, media objects)."""
        task = get_object_or_404(Task, public_id=public_id)
        if not self.has_view_permission(request, task):
            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:tasks_task_change", args=[task.pk]))

    def state_view(self, request, object_id: int):
        """What the change page polls while the task is not terminal."""
        task = self._get_task(request, object_id)
        response = JsonResponse(
            {
                "taskId": task.public_id,
                "status": task.status,
                "progress": task.progress,
                "terminal": task.is_terminal,
                "updatedAt": task.updated_at.isoformat(),
            }
        )
        response["Cache-Control"] = "no-store"
        return response

    def _operate(self, request, object_id: int, operate):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        task = self._get_task(request, object_id)
        if not self.has_operate_permission(request, task):
            raise PermissionDenied
        back = reverse("admin:tasks_task_change", args=[task.pk])
        try:
            with transaction.atomic():
                done = operate(task)
        except AppError as exc:
            self.message_user(request, " ".join(app_error_text(exc)), messages.ERROR)
            return HttpResponseRedirect(back)
        return HttpResponseRedirect(done)

    def cancel_view(self, request, object_id: int):
        def cancel(task):
            task_cancel(task=task)
            self.message_user(request, f"Canceled {task.public_id}; its points were released.")
            return reverse("admin:tasks_task_change", args=[task.pk])

        return self._operate(request, object_id, cancel)

    def retry_view(self, request, object_id: int):
        def retry(task):
            created = task_retry(task=task)
            self.message_user(request, f"Queued {created.public_id}, a retry of {task.public_id}.")
            return reverse("admin:tasks_task_change", args=[created.pk])

        return self._operate(request, object_id, retry)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        task = self.get_object(request, object_id)
        extra = {}
        if task is not None:
            extra = {
                "task": task,
                "can_operate": self.has_operate_permission(request, task),
                "can_cancel": not task.is_terminal,
                "can_retry": task.status in {TaskStatus.FAILED, TaskStatus.CANCELED},
                "events_url": reverse("admin:realtime_event_changelist") + f"?q={task.public_id}",
                "state_url": reverse("admin:tasks_task_state", args=[task.pk]),
            }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    # --- bulk actions --------------------------------------------------------------------------

    @admin.action(
        description="Cancel selected tasks (releases their points)", permissions=["operate"]
    )
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

    @admin.action(description="Retry selected failed/canceled tasks", permissions=["operate"])
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
