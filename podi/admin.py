from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.utils import timezone
from django.utils.html import format_html

from podi.admin_helpers import ServiceAdminMixin
from podi.models import SCOPES, IdempotencyRecord, ServiceKey
from podi.services import (
    service_key_create,
    service_key_delete,
    service_key_revoke,
    service_key_rotate_webhook_secret,
    service_key_update,
    user_identity_errors,
    user_setup,
)


class ServiceKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES], widget=forms.CheckboxSelectMultiple, required=False
    )
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.all(),
        required=False,
        help_text="The account the key acts as. Empty: a new service account svc-<name>.",
    )

    class Meta:
        model = ServiceKey
        fields = ["name", "scopes", "user", "expires_at"]


class ActiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lt=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(expires_at__lt=now)
        return queryset


@admin.register(ServiceKey)
class ServiceKeyAdmin(ServiceAdminMixin, admin.ModelAdmin):
    form = ServiceKeyForm
    update_service = service_key_update
    delete_service = service_key_delete
    service_arg = "key"
    service_fields = ["name", "scopes", "user", "expires_at"]
    list_display = [
        "name",
        "prefix_display",
        "scope_list",
        "user",
        "state",
        "last_used_at",
        "created_at",
    ]
    list_filter = [ActiveFilter]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user"]
    actions = ["revoke", "rotate_webhook_secret"]
    readonly_fields = ["prefix", "created_at", "created_by", "last_used_at", "revoked_at"]

    @admin.display(description="key")
    def prefix_display(self, obj):
        return format_html("<code>{}…</code>", obj.prefix)

    @admin.display(description="scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes) or "—"

    @admin.display(description="state")
    def state(self, obj):
        if obj.revoked_at:
            return format_html('<span style="color:#b00">{}</span>', "revoked")
        if not obj.is_active:
            return format_html('<span style="color:#b60">{}</span>', "expired")
        return format_html('<span style="color:#080">{}</span>', "active")

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "scopes", "user", "expires_at"]
        return ["name", "scopes", "user", "expires_at", *self.readonly_fields]

    def service_create(self, request, form):
        key, raw = service_key_create(created_by=request.user, **self.service_values(request, form))
        messages.warning(
            request,
            format_html(
                "Service key created. Copy it now, it will not be shown again: <code>{}</code>", raw
            ),
        )
        return key

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for key in queryset:
            service_key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")

    @admin.action(description="Rotate the webhook signing secret of selected keys (shown once)")
    def rotate_webhook_secret(self, request, queryset):
        for key in queryset:
            secret = service_key_rotate_webhook_secret(key=key)
            messages.warning(
                request,
                format_html(
                    "New webhook signing secret of {}: <code>{}</code> Copy it now, it will not "
                    "be shown again; callbacks of tasks this key submits are signed with it.",
                    key,
                    secret,
                ),
            )


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ["key", "principal", "route", "status_code", "completed", "created_at"]
    list_filter = ["completed"]
    search_fields = ["key", "principal", "route"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- Users: the admin enforces the same identity rules as registration -----------------------


class _IdentityRules:
    """Usernames without "@", one account per email (case-insensitive)."""

    def _identity_error(self, field: str, value: str) -> str:

        instance = getattr(self, "instance", None)
        errors = user_identity_errors(
            username=value if field == "username" else None,
            email=value if field == "email" else None,
            user_id=instance.pk if instance is not None else None,
        )
        if errors.get(field):
            raise forms.ValidationError(errors[field][0], code=f"{field}_conflict")
        return value

    def clean_username(self):
        return self._identity_error("username", self.cleaned_data.get("username") or "")

    def clean_email(self):
        return self._identity_error("email", self.cleaned_data.get("email") or "")


class PodiUserCreationForm(_IdentityRules, AdminUserCreationForm):
    pass


class PodiUserChangeForm(_IdentityRules, UserChangeForm):
    pass


admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class PodiUserAdmin(UserAdmin):
    form = PodiUserChangeForm
    add_form = PodiUserCreationForm

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            user_setup(user=obj)  # what a registered user has from the start (their account)
