"""Admin for live events: webhook deliveries (with every attempt, redeliver) and the event log."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from podi.realtime.models import Event, WebhookAttempt, WebhookDelivery
from podi.realtime.webhooks import webhook_redeliver

DELIVERY_COLOURS = {
    WebhookDelivery.Status.PENDING: "#666",
    WebhookDelivery.Status.SUCCEEDED: "#218838",
    WebhookDelivery.Status.FAILED: "#b36b00",
    WebhookDelivery.Status.EXHAUSTED: "#c82333",
    WebhookDelivery.Status.STOPPED: "#a0a0a0",
}
OVERDUE_AFTER = timedelta(minutes=1)


class DeliveryAttentionFilter(admin.SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [
            ("failing", "Failing (retries scheduled)"),
            ("exhausted", "Exhausted (gave up)"),
            ("stopped", "Stopped (receiver answered 410)"),
            ("overdue", "Overdue (due over a minute ago, not attempted)"),
        ]

    def queryset(self, request, queryset):
        Status = WebhookDelivery.Status
        if self.value() == "failing":
            return queryset.filter(status=Status.FAILED)
        if self.value() == "exhausted":
            return queryset.filter(status=Status.EXHAUSTED)
        if self.value() == "stopped":
            return queryset.filter(status=Status.STOPPED)
        if self.value() == "overdue":
            return queryset.filter(
                status__in=[Status.PENDING, Status.FAILED],
                next_attempt_at__lt=timezone.now() - OVERDUE_AFTER,
            )
        return queryset


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ["number", "started_at", "status_code", "latency_ms", "error", "next_attempt_at"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ["number"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "event_type",
        "task_public_id",
        "url",
        "status_badge",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = [DeliveryAttentionFilter, "status", "event_type", "created_at"]
    search_fields = ["public_id", "task_public_id", "url", "user__username"]
    date_hierarchy = "created_at"
    inlines = [WebhookAttemptInline]
    actions = ["redeliver"]
    readonly_fields = [
        "public_id",
        "user",
        "task_public_id",
        "service_key",
        "event_type",
        "url",
        "payload",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    ]
    fields = readonly_fields
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="status", ordering="status")
    def status_badge(self, delivery: WebhookDelivery):
        return format_html(
            '<span style="color:{};font-weight:600">{}</span>',
            DELIVERY_COLOURS.get(delivery.status, "#666"),
            delivery.status,
        )

    @admin.action(description="Redeliver selected webhooks now (same webhook-id)")
    def redeliver(self, request, queryset):
        count = 0
        for delivery in queryset:
            webhook_redeliver(delivery=delivery)
            count += 1
        self.message_user(request, f"Queued {count} delivery(ies) for another attempt.")


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """The persisted event log (what WebSocket subscribers receive and resume from)."""

    list_display = ["public_id", "user", "seq", "type", "task_public_id", "created_at"]
    list_filter = ["type", "created_at"]
    search_fields = ["public_id", "user__username", "task_public_id"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "public_id",
        "user",
        "seq",
        "type",
        "task_public_id",
        "payload",
        "created_at",
    ]
    fields = readonly_fields
    ordering = ["-pk"]
    list_per_page = 100

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
