"""Wallet console: accounts (with their ledger), holds and ledger entries — all read-only.

Money moves only through the services: the account actions "Grant points" and "Adjust" ask for
the points and a reason on an intermediate page and call ``wallet_grant``/``wallet_adjust``;
the hold actions call ``hold_release`` and ``holds_expire``.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from podi.admin import PodiUserAdmin
from podi.admin_helpers import ServiceAdminMixin, app_error_text
from podi.errors import AppError
from wallet.models import Account, Hold, HoldStatus, LedgerEntry
from wallet.selectors import account_for_user
from wallet.services import MAX_POINTS, hold_release, holds_expire, wallet_adjust, wallet_grant

INLINE_ENTRIES = 50


def user_link(user_id: int, text) -> str:
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:auth_user_change", args=[user_id]), text
    )


def account_link(account: Account) -> str:
    url = reverse("admin:wallet_account_change", args=[account.pk])
    return format_html('<a href="{}">{}</a>', url, f"account of {account.user}")


def task_link(task_id: str) -> str:
    """A task by its public id (the task console resolves it; the tasks app sits above)."""
    if not task_id:
        return "—"
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:tasks_task_by_public_id", args=[task_id]), task_id
    )


def hold_link(hold: Hold | None) -> str:
    if hold is None:
        return "—"
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:wallet_hold_change", args=[hold.pk]), hold.public_id
    )


def may_grant(request) -> bool:
    return request.user.has_perm("wallet.change_account")


def grant_page(model_admin, request, *, user, back: str):
    """One user's "Grant points" page (user and account consoles): ``wallet_grant``, which opens
    the account when the user has none yet. POST only changes anything; CSRF by the admin."""
    if not may_grant(request):
        raise PermissionDenied
    posted = request.method == "POST"
    form = PointsForm(request.POST if posted else None, signed=False)
    if posted and form.is_valid():
        points = form.cleaned_data["points"]
        try:
            with transaction.atomic(durable=True):
                entry = wallet_grant(
                    user=user,
                    points=points,
                    reason=form.cleaned_data["reason"],
                    staff_user=request.user,
                )
        except AppError as exc:
            form.add_error("points", app_error_text(exc))
        else:
            model_admin.message_user(
                request,
                f"Granted +{points} points to {user}; balance {entry.balance_after}.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(back)
    account = Account.objects.filter(user=user).first()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Grant points to {user}",
        "opts": model_admin.model._meta,
        "grant_user": user,
        "account": account,
        "form": form,
        "back": back,
    }
    return TemplateResponse(request, "admin/wallet/grant_form.html", context)


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
        "task",
        "action",
        "reason",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("hold")

    @admin.display(description="hold")
    def hold_link(self, obj):
        return hold_link(obj.hold)

    @admin.display(description="task")
    def task(self, obj):
        return task_link(obj.task_id)


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


def points_action(model_admin, request, users, *, signed: bool, title: str):
    """The "Grant points" / "Adjust" admin actions: ask for the points and a reason on an
    intermediate page, then call ``wallet_grant`` / ``wallet_adjust`` per user (a grant opens the
    account of a user who has none)."""
    form = PointsForm(request.POST if "apply" in request.POST else None, signed=signed)
    if "apply" in request.POST and form.is_valid():
        points = form.cleaned_data["points"]
        reason = form.cleaned_data["reason"]
        done, refused = 0, []
        for user in users:
            try:
                with transaction.atomic(durable=True):
                    if signed:
                        wallet_adjust(
                            user=user, points=points, reason=reason, staff_user=request.user
                        )
                    else:
                        wallet_grant(
                            user=user, points=points, reason=reason, staff_user=request.user
                        )
                done += 1
            except AppError as exc:
                refused.append(f"{user}: {exc.message}")
        verb = "Adjusted" if signed else "Granted"
        if done:
            model_admin.message_user(
                request, f"{verb} {points:+d} points on {done} account(s).", messages.SUCCESS
            )
        for text in refused:
            model_admin.message_user(request, f"Refused — {text}", messages.ERROR)
        return None
    accounts = {a.user_id: a for a in Account.objects.filter(user__in=[u.pk for u in users])}
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "opts": model_admin.model._meta,
        "rows": [{"user": user, "account": accounts.get(user.pk)} for user in users],
        "form": form,
        "action": request.POST.get("action"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
    }
    return TemplateResponse(request, "admin/wallet/account/points_form.html", context)


class AccountForm(forms.ModelForm):
    class Meta:
        model = Account
        fields = ["user"]


@admin.register(Account)
class AccountAdmin(ServiceAdminMixin, admin.ModelAdmin):
    form = AccountForm
    list_display = ["owner", "balance", "frozen", "total", "holds_link", "updated_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "user__email"]
    ordering = ["-updated_at"]
    actions = ["grant_points", "adjust_points"]
    inlines = [LedgerEntryInline]
    readonly_fields = [
        "owner",
        "balance",
        "frozen",
        "created_at",
        "updated_at",
        "holds_link",
        "entries_link",
        "tasks_link",
    ]
    change_form_template = "admin/wallet/account/change_form.html"

    @admin.display(description="user", ordering="user__username")
    def owner(self, obj):
        return user_link(obj.user_id, obj.user)

    @admin.display(description="tasks")
    def tasks_link(self, obj):
        url = reverse("admin:tasks_task_changelist")
        return format_html(
            '<a href="{}?user__id__exact={}">tasks of {}</a>', url, obj.user_id, obj.user
        )

    def get_urls(self):
        return [
            path(
                "<int:object_id>/grant/",
                self.admin_site.admin_view(self.grant_view),
                name="wallet_account_grant",
            ),
            *super().get_urls(),
        ]

    def grant_view(self, request, object_id: int):
        account = get_object_or_404(Account.objects.select_related("user"), pk=object_id)
        back = reverse("admin:wallet_account_change", args=[account.pk])
        return grant_page(self, request, user=account.user, back=back)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {"can_grant": may_grant(request)}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

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

    @admin.action(description="Grant points to the selected accounts", permissions=["points"])
    def grant_points(self, request, queryset):
        users = [account.user for account in queryset.select_related("user").order_by("pk")]
        return points_action(self, request, users, signed=False, title="Grant points")

    @admin.action(
        description="Adjust the selected accounts (signed correction)", permissions=["points"]
    )
    def adjust_points(self, request, queryset):
        users = [account.user for account in queryset.select_related("user").order_by("pk")]
        return points_action(self, request, users, signed=True, title="Adjust points")


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
        "task",
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
        "user",
        "account_view",
        "task",
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
        "entries_view",
    ]
    fields = readonly_fields

    @admin.display(description="user", ordering="account__user__username")
    def user(self, obj):
        return user_link(obj.account.user_id, obj.account.user)

    @admin.display(description="account")
    def account_view(self, obj):
        return account_link(obj.account)

    @admin.display(description="task")
    def task(self, obj):
        return task_link(obj.task_id)

    @admin.display(description="ledger entries")
    def entries_view(self, obj):
        entries = list(obj.entries.order_by("created_at", "id"))
        if not entries:
            return "—"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                '<li><a href="{}">{}</a> {} {} (balance after {})</li>',
                (
                    (
                        reverse("admin:wallet_ledgerentry_change", args=[entry.pk]),
                        entry.public_id,
                        entry.type,
                        entry.points,
                        entry.balance_after,
                    )
                    for entry in entries
                ),
            ),
        )

    def get_urls(self):
        return [
            path(
                "by-id/<str:public_id>/",
                self.admin_site.admin_view(self.by_public_id_view),
                name="wallet_hold_by_public_id",
            ),
            *super().get_urls(),
        ]

    def by_public_id_view(self, request, public_id: str):
        """Tasks name their hold by its public id."""
        hold = get_object_or_404(Hold, public_id=public_id)
        if not self.has_view_permission(request, hold):
            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:wallet_hold_change", args=[hold.pk]))

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
        "task",
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
        "user",
        "account_view",
        "type",
        "points",
        "amount",
        "balance_after",
        "frozen_after",
        "hold_link",
        "task",
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
        return user_link(obj.account.user_id, obj.account.user)

    @admin.display(description="account")
    def account_view(self, obj):
        return account_link(obj.account)

    @admin.display(description="hold")
    def hold_link(self, obj):
        return hold_link(obj.hold)

    @admin.display(description="task")
    def task(self, obj):
        return task_link(obj.task_id)


# --- Users: balance in the list, "Grant points", and everything of theirs one click away -------

User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class WalletUserAdmin(PodiUserAdmin):
    list_display = [*PodiUserAdmin.list_display, "balance"]
    actions = ["grant_points"]
    change_form_template = "admin/wallet/user/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("wallet_account")

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return [*fieldsets, ("Wallet and activity", {"fields": ["wallet", "activity"]})]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "wallet", "activity"]

    @staticmethod
    def _account(user) -> Account | None:
        try:
            return user.wallet_account
        except Account.DoesNotExist:
            return None

    @admin.display(description="balance", ordering="wallet_account__balance")
    def balance(self, user):
        account = self._account(user)
        if account is None:
            return "—"
        url = reverse("admin:wallet_account_change", args=[account.pk])
        if account.frozen:
            return format_html(
                '<a href="{}">{}</a> (+{} frozen)', url, account.balance, account.frozen
            )
        return format_html('<a href="{}">{}</a>', url, account.balance)

    @admin.display(description="wallet")
    def wallet(self, user):
        account = self._account(user)
        if account is None:
            return "No account yet: granting points opens one."
        return format_html(
            '<a href="{}">balance {}, frozen {}</a>',
            reverse("admin:wallet_account_change", args=[account.pk]),
            account.balance,
            account.frozen,
        )

    @admin.display(description="records")
    def activity(self, user):
        account = self._account(user)
        links = [
            (reverse("admin:tasks_task_changelist") + f"?user__id__exact={user.pk}", "tasks"),
            (
                reverse("admin:media_app_mediaobject_changelist") + f"?owner__id__exact={user.pk}",
                "media",
            ),
        ]
        if account is not None:
            links += [
                (
                    reverse("admin:wallet_hold_changelist") + f"?account__id__exact={account.pk}",
                    "holds",
                ),
                (
                    reverse("admin:wallet_ledgerentry_changelist")
                    + f"?account__id__exact={account.pk}",
                    "ledger entries",
                ),
            ]
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    def get_urls(self):
        return [
            path(
                "<int:object_id>/grant/",
                self.admin_site.admin_view(self.grant_view),
                name="auth_user_grant",
            ),
            *super().get_urls(),
        ]

    def grant_view(self, request, object_id: int):
        user = get_object_or_404(User, pk=object_id)
        return grant_page(
            self, request, user=user, back=reverse("admin:auth_user_change", args=[user.pk])
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {"can_grant": may_grant(request)}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def has_points_permission(self, request):
        return may_grant(request)

    @admin.action(description="Grant points to the selected users", permissions=["points"])
    def grant_points(self, request, queryset):
        """The accounts of the selected users (opened when missing) get the points."""
        users = list(queryset.select_related("wallet_account").order_by("pk"))
        return points_action(self, request, users, signed=False, title="Grant points")
