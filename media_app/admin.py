from django.contrib import admin, messages
from django.db.models import Q
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from media_app.models import MediaObject, MediaStatus, UploadKeyVersion
from media_app.services import media_delete, signed_download_url, upload_keys_revoke
from podi.admin_helpers import ReadableLabelsMixin, ServiceAdminMixin
from podi.errors import AppError


class SizeFilter(admin.SimpleListFilter):
    title = "size"
    parameter_name = "size"
    _BUCKETS = {
        "small": (None, 1024 * 1024),
        "medium": (1024 * 1024, 50 * 1024 * 1024),
        "large": (50 * 1024 * 1024, None),
    }

    def lookups(self, request, model_admin):
        return [("small", "< 1 MB"), ("medium", "1–50 MB"), ("large", "≥ 50 MB")]

    def queryset(self, request, queryset):
        bounds = self._BUCKETS.get(self.value() or "")
        if bounds is None:
            return queryset
        low, high = bounds
        if low is not None:
            queryset = queryset.filter(size__gte=low)
        if high is not None:
            queryset = queryset.filter(size__lt=high)
        return queryset


class MimeFilter(admin.SimpleListFilter):
    title = "type"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [("image", "Images"), ("video", "Video"), ("audio", "Audio"), ("other", "Other")]

    def queryset(self, request, queryset):
        value = self.value()
        if value in ("image", "video", "audio"):
            return queryset.filter(mime_type__startswith=f"{value}/")
        if value == "other":
            return queryset.exclude(
                Q(mime_type__startswith="image/")
                | Q(mime_type__startswith="video/")
                | Q(mime_type__startswith="audio/")
            )
        return queryset


@admin.register(MediaObject)
class MediaObjectAdmin(ReadableLabelsMixin, admin.ModelAdmin):
    list_display = [
        "object_key",
        "owner_link",
        "status",
        "purpose",
        "size_display",
        "mime_type",
        "dimensions",
        "task",
        "created_at",
    ]
    list_filter = ["status", "purpose", "backend", SizeFilter, MimeFilter, "created_at"]
    search_fields = ["object_key", "owner__username", "owner__email", "task_id", "file_name"]
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    actions = ["delete_from_storage"]
    readonly_fields = [
        "object_key",
        "owner_link",
        "backend",
        "bucket",
        "file_name",
        "size",
        "mime_type",
        "sha256",
        "width",
        "height",
        "status",
        "purpose",
        "task",
        "created_at",
        "updated_at",
        "uploaded_at",
        "deleted_at",
        "preview",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # rows are the record of what was in storage; use the action instead

    @admin.display(description="owner", ordering="owner__username")
    def owner_link(self, obj):
        if obj.owner_id is None:
            return "—"
        url = reverse("admin:auth_user_change", args=[obj.owner_id])
        return format_html('<a href="{}">{}</a>', url, obj.owner)

    @admin.display(description="task")
    def task(self, obj):
        """The task by its public id (the task console resolves it; tasks sit above)."""
        if not obj.task_id:
            return "—"
        url = reverse("admin:tasks_task_by_public_id", args=[obj.task_id])
        return format_html('<a href="{}">{}</a>', url, obj.task_id)

    @admin.display(description="size", ordering="size")
    def size_display(self, obj):
        return filesizeformat(obj.size)

    @admin.display(description="w×h")
    def dimensions(self, obj):
        if obj.width and obj.height:
            return f"{obj.width}×{obj.height}"
        return "—"

    @admin.display(description="download")
    def preview(self, obj):
        if obj.status != MediaStatus.UPLOADED:
            return "—"

        try:
            url, _ = signed_download_url(object_key=obj.object_key, ttl=300)
        except AppError:
            return "storage unavailable"
        if obj.mime_type.startswith("image/"):
            return format_html(
                '<a href="{}" rel="noopener" target="_blank"><img src="{}" alt="" '
                'style="max-width:256px;max-height:256px"></a><br><small>signed link (5 min)</small>',
                url,
                url,
            )
        return format_html(
            '<a href="{}" rel="noopener" target="_blank">signed link (5 min)</a>', url
        )

    @admin.action(description="Delete from storage (marks the rows deleted)")
    def delete_from_storage(self, request, queryset):
        done, failed = 0, 0
        for media in queryset.exclude(status=MediaStatus.DELETED):
            try:
                media_delete(media=media)
                done += 1
            except AppError:
                failed += 1
        self.message_user(request, f"Deleted {done} object(s) from storage.", messages.SUCCESS)
        if failed:
            self.message_user(
                request, f"{failed} object(s) could not be deleted; retry later.", messages.ERROR
            )


@admin.register(UploadKeyVersion)
class UploadKeyVersionAdmin(ServiceAdminMixin, admin.ModelAdmin):
    list_display = ["user", "version", "revoked_at"]
    search_fields = ["user__username", "user__email"]
    list_select_related = ["user"]
    readonly_fields = ["version", "revoked_at"]
    fields = ["user", "version", "revoked_at"]
    actions = ["revoke"]
    autocomplete_fields = ["user"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deleting the row would start the versions again and revive revoked keys.
        return False

    def service_create(self, request, form):
        # Adding a row = revoking the user's outstanding keys, through the service.
        upload_keys_revoke(user=form.cleaned_data["user"])
        return UploadKeyVersion.objects.get(user=form.cleaned_data["user"])

    @admin.action(description="Revoke outstanding upload keys")
    def revoke(self, request, queryset):
        for row in queryset.select_related("user"):
            upload_keys_revoke(user=row.user)
        self.message_user(request, f"Revoked the upload keys of {queryset.count()} user(s).")
