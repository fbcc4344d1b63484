"""Wallet console: accounts (with their ledger), holds and ledger entries — all read-only.

Money moves only through the services: the account actions "Grant points" and "Adjust" ask for
the points and a reason on an intermediate page and call ``wallet_grant``/``wallet_adjust``;
the hold actions call ``hold_release`` and ``holds_expire``.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import transaction
from django.forms.models import BaseInlineFormSet
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from podi.admin_helpers import ServiceAdminMixin
from podi.errors import AppError
from wallet.models import Account, Hold, HoldStatus, LedgerEntry
from wallet.selectors import account_for_user
from wallet.services import MAX_POINTS, hold_release, holds_expire, wallet_adjust, wallet_grant

INLINE_ENTRIES = 50


class ReadOnlyAdminMixin:
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RecentEntriesFormSet(BaseInlineFormSet):
    """Only the latest entries: an account's ledger grows without bound."""

    def get_queryset(self):
        if not hasattr(self, "_recent"):
            queryset = super().get_queryset().order_by("-created_at", "-id")
            self._recent = list(queryset[:INLINE_ENTRIES])
        return self._recent


class LedgerEntryInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = LedgerEntry
    formset = RecentEntriesFormSet
    fk_name = "account"
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = f"ledger (latest {INLINE_ENTRIES}; all in Ledger entries)"
    fields = [
        "created_at",
        "type",
        "points",
        "amount",
        "balance_after",
        "frozen_after",
        "hold_link",
        "task_id",
        "action",
        "reason",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("hold")

    @admin.display(description="hold")
    def hold_link(self, obj):
        if obj.hold_id is None:
            return "—"
        url = reverse("admin:wallet_hold_change", args=[obj.hold_id])
        return format_html('<a href="{}">{}</a>', url, obj.hold.public_id)


class PointsForm(forms.Form):
    points = forms.IntegerField(min_value=-MAX_POINTS, max_value=MAX_POINTS)
    reason = forms.CharField(max_length=500, widget=forms.TextInput(attrs={"size": 60}))

    def __init__(self, *args, signed: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.signed = signed
        if signed:
            self.fields["points"].help_text = "Signed: +50 adds, −50 removes (never below 0)."
        else:
            self.fields["points"].min_value = 1
            self.fields["points"].help_text = "Points to add to each selected account."
            self.fields["reason"].required = False
        self.fields["reason"].help_text = "Shown in the user's transactions."

    def clean_points(self):
        points = self.cleaned_data["points"]
        if points == 0:
            raise forms.ValidationError("Must not be 0.")
        if not self.signed and points < 1:
            raise forms.ValidationError("Must be at least 1.")
        return points


class AccountForm(forms.ModelForm):
    class Meta:
        model = Account
        fields = ["user"]


@admin.register(Account)
class AccountAdmin(ServiceAdminMixin, admin.ModelAdmin):
    form = AccountForm
    list_display = ["user", "balance", "frozen", "total", "holds_link", "updated_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "user__email"]
    ordering = ["-updated_at"]
    actions = ["grant_points", "adjust_points"]
    inlines = [LedgerEntryInline]
    readonly_fields = ["user", "balance", "frozen", "created_at", "updated_at", "entries_link"]

    def has_change_permission(self, request, obj=None):
        return False  # balances change only through the actions below

    def has_delete_permission(self, request, obj=None):
        return False

    def service_create(self, request, form):
        return account_for_user(form.cleaned_data["user"])  # an empty account

    def has_points_permission(self, request):
        return request.user.has_perm("wallet.change_account")

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["user"]
        return self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    @admin.display(description="total")
    def total(self, obj):
        return obj.balance + obj.frozen

    @admin.display(description="holds")
    def holds_link(self, obj):
        url = reverse("admin:wallet_hold_changelist")
        return format_html('<a href="{}?account__id__exact={}">holds</a>', url, obj.pk)

    @admin.display(description="ledger")
    def entries_link(self, obj):
        url = reverse("admin:wallet_ledgerentry_changelist")
        count = obj.entries.count()
        return format_html(
            '<a href="{}?account__id__exact={}">all {} entries</a>', url, obj.pk, count
        )

    def _points_action(self, request, queryset, *, signed: bool, title: str):
        form = PointsForm(request.POST if "apply" in request.POST else None, signed=signed)
        if "apply" in request.POST and form.is_valid():
            points = form.cleaned_data["points"]
            reason = form.cleaned_data["reason"]
            done, refused = 0, []
            for account in queryset.select_related("user").order_by("pk"):
                try:
                    with transaction.atomic(durable=True):
                        if signed:
                            wallet_adjust(
                                user=account.user,
                                points=points,
                                reason=reason,
                                staff_user=request.user,
                            )
                        else:
                            wallet_grant(
                                user=account.user,
                                points=points,
                                reason=reason,
                                staff_user=request.user,
                            )
                    done += 1
                except AppError as exc:
                    refused.append(f"{account.user}: {exc.message}")
            verb = "Adjusted" if signed else "Granted"
            if done:
                self.message_user(
                    request, f"{verb} {points:+d} points on {done} account(s).", messages.SUCCESS
                )
            for text in refused:
                self.message_user(request, f"Refused — {text}", messages.ERROR)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "accounts": list(queryset.select_related("user")),
            "form": form,
            "action": request.POST.get("action"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        }
        return TemplateResponse(request, "admin/wallet/account/points_form.html", context)

    @admin.action(description="Grant points to the selected accounts", permissions=["points"])
    def grant_points(self, request, queryset):
        return self._points_action(request, queryset, signed=False, title="Grant points")

    @admin.action(
        description="Adjust the selected accounts (signed correction)", permissions=["points"]
    )
    def adjust_points(self, request, queryset):
        return self._points_action(request, queryset, signed=True, title="Adjust points")


class HoldStateFilter(admin.SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [("overdue", "Expired but unsettled"), ("open", "Held, not yet due")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "overdue":
            return queryset.filter(status=HoldStatus.HELD, expires_at__lte=now)
        if self.value() == "open":
            return queryset.filter(status=HoldStatus.HELD, expires_at__gt=now)
        return queryset


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "public_id",
        "user",
        "task_id",
        "points",
        "status_badge",
        "deducted",
        "released",
        "action",
        "channel",
        "expires_at",
        "created_at",
    ]
    list_filter = ["status", HoldStateFilter, "channel", "created_at"]
    list_select_related = ["account__user"]
    search_fields = ["public_id", "task_id", "account__user__username", "action"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    actions = ["release_holds", "expire_overdue"]
    readonly_fields = [
        "public_id",
        "account",
        "task_id",
        "points",
        "status",
        "deducted",
        "released",
        "action",
        "channel",
        "owner_settles",
        "expires_at",
        "created_at",
        "settled_at",
    ]
    fields = readonly_fields

    @admin.display(description="user", ordering="account__user__username")
    def user(self, obj):
        return obj.account.user

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        if obj.is_overdue():
            return format_html('<span style="color:#b00">{}</span>', "held — overdue")
        colour = {"held": "#b60", "confirmed": "#080"}.get(obj.status, "#666")
        return format_html('<span style="color:{}">{}</span>', colour, obj.status)

    def has_settle_permission(self, request):
        return request.user.has_perm("wallet.change_hold")

    @admin.action(
        description="Release the selected held holds (give the points back)",
        permissions=["settle"],
    )
    def release_holds(self, request, queryset):
        released, skipped = 0, 0
        for hold in queryset.filter(status=HoldStatus.HELD).order_by("account_id", "pk"):
            with transaction.atomic(durable=True):
                hold = hold_release(hold=hold)
            released += hold.status == HoldStatus.RELEASED
        skipped = queryset.exclude(status=HoldStatus.HELD).count()
        self.message_user(
            request, f"Released {released} hold(s); {skipped} already settled were left alone."
        )

    @admin.action(
        description="Expire every overdue hold now (not just the selected)", permissions=["settle"]
    )
    def expire_overdue(self, request, queryset):
        count = holds_expire()
        self.message_user(request, f"Expired {count} overdue hold(s).")


class EntryHoldFilter(admin.SimpleListFilter):
    title = "hold"
    parameter_name = "has_hold"

    def lookups(self, request, model_admin):
        return [("yes", "About a hold"), ("no", "Grants and adjustments")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(hold__isnull=False)
        if self.value() == "no":
            return queryset.filter(hold__isnull=True)
        return queryset


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "public_id",
        "created_at",
        "user",
        "type",
        "points",
        "amount",
        "balance_after",
        "frozen_after",
        "hold_link",
        "task_id",
        "action",
        "reason",
    ]
    list_filter = ["type", EntryHoldFilter, "channel", "created_at"]
    list_select_related = ["account__user", "hold"]
    search_fields = [
        "public_id",
        "account__user__username",
        "task_id",
        "reference",
        "hold__public_id",
        "reason",
    ]
    ordering = ["-created_at", "-id"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    readonly_fields = [
        "public_id",
        "account",
        "type",
        "points",
        "amount",
        "balance_after",
        "frozen_after",
        "hold",
        "task_id",
        "action",
        "channel",
        "reason",
        "reference",
        "created_by",
        "created_at",
    ]
    fields = readonly_fields

    @admin.display(description="user", ordering="account__user__username")
    def user(self, obj):
        return obj.account.user

    @admin.display(description="hold")
    def hold_link(self, obj):
        if obj.hold_id is None:
            return "—"
        url = reverse("admin:wallet_hold_change", args=[obj.hold_id])
        return format_html('<a href="{}">{}</a>', url, obj.hold.public_id)
