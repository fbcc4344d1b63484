"""Pieces the admin pages of several apps share: JSON shown and edited readably, an
``AppError`` turned into what an operator reads (a form error or a message), and
``ServiceAdminMixin``, which routes admin saves and deletes through the services."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpResponseRedirect

from podi.errors import AppError


def pretty(value, *, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=sort_keys)


def app_error_text(exc: AppError) -> list[str]:
    """The lines an operator should read for an AppError, each once."""
    lines: list[str] = []
    for field, msgs in (exc.details.get("fields") or {}).items():
        lines.extend(f"{field}: {m}" for m in msgs)
    if exc.message not in lines:  # a validation error's message repeats its first field error
        lines.insert(0, exc.message)
    for extra in exc.details.get("errors") or []:
        if extra not in exc.message and extra not in lines:
            lines.append(extra)
    return lines


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def form_add_app_error(
    form: forms.BaseForm,
    exc: AppError,
    *,
    field: str | None = None,
    aliases: dict[str, str] | None = None,
) -> None:
    """Put an ``AppError`` on ``form``: each message once, at the field it is about.

    A service names fields in ``details["fields"]`` (``base_url``, ``paramsSchema``,
    ``config.poll.interval``); the first segment, snake-cased and passed through ``aliases``,
    picks the form field. What matches no field goes to ``field`` (else to the form's top).
    """
    aliases = aliases or {}
    fallback = field if field in form.fields else None
    fields = exc.details.get("fields") or {}
    for key, msgs in fields.items():
        head, _, rest = key.partition(".")
        name = aliases.get(head) or aliases.get(_snake(head)) or _snake(head)
        target = name if name in form.fields else fallback
        exact = target == name and not rest
        form.add_error(target, [m if exact else f"{key}: {m}" for m in msgs])
    if not fields:
        lines = [exc.message]
        lines += [e for e in exc.details.get("errors") or [] if e not in exc.message]
        form.add_error(fallback, lines)


def as_form_error(exc: AppError) -> forms.ValidationError:
    return forms.ValidationError(app_error_text(exc))


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows its value indented and says where the JSON is broken."""

    widget = forms.Textarea(
        attrs={"rows": 14, "cols": 100, "style": "font-family:monospace", "spellcheck": "false"}
    )

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        if value is None:
            return ""  # an empty box, not the word null
        return pretty(value)

    def to_python(self, value):
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from None


# Words a field name spells that read wrong capitalised ("Base url", "Api keys", "Sha256").
ACRONYMS = {
    "url": "URL",
    "urls": "URLs",
    "api": "API",
    "id": "ID",
    "ids": "IDs",
    "comfyui": "ComfyUI",
    "sha256": "SHA-256",
    "http": "HTTP",
    "json": "JSON",
    "gpu": "GPU",
    "ip": "IP",
    "jwt": "JWT",
    "mime": "MIME",
    "oss": "OSS",
    "s3": "S3",
}


def readable_label(name: str) -> str:
    """``base_url`` → "Base URL", ``comfyui_version`` → "ComfyUI version"."""
    words = [ACRONYMS.get(word, word) for word in name.split("_") if word]
    if not words:
        return name
    first = words[0]
    words[0] = first if first in ACRONYMS.values() else first[:1].upper() + first[1:]
    return " ".join(words)


def readable_labels(model) -> dict[str, str]:
    """Labels for the fields of ``model`` whose default verbose name spells an acronym."""
    labels = {}
    for field in model._meta.get_fields():
        name = getattr(field, "name", "")
        default = name.replace("_", " ")
        if getattr(field, "verbose_name", None) != default:
            continue  # no verbose name of its own or one chosen on purpose
        if any(word in ACRONYMS for word in name.split("_")):
            labels[name] = readable_label(name)
    return labels


class ReadableLabelsMixin:
    """Form fields and read-only fields of a ``ModelAdmin`` read "Base URL", not "Base url"
    (form ``labels``; the models keep their verbose names, so no migration)."""

    def get_form(self, request, obj=None, change=False, **kwargs):
        labels = readable_labels(self.model)
        if labels:
            own = getattr(getattr(self.form, "_meta", None), "labels", None) or {}
            kwargs["labels"] = {**labels, **own, **(kwargs.get("labels") or {})}
        return super().get_form(request, obj, change, **kwargs)


class ServiceAdminMixin(ReadableLabelsMixin):
    """Admin saves and deletes go through the app's services, never ``obj.save()``/``delete()``.

    A ``ModelAdmin`` names its services and the form fields they take::

        create_service = executor_create   # called as create_service(**values)
        update_service = executor_update   # called as update_service(executor=row, **changes)
        delete_service = executor_delete   # called as delete_service(executor=row)
        service_fields = ["name", "kind", "base_url"]

    ``values`` are the cleaned ``service_fields`` (override ``service_values`` to shape them);
    ``changes`` are those of them the operator changed (no call when none did). ``service_arg``
    is the keyword the services take the row by (default: the model name). Admins whose create or
    update does more (a secret shown once, a new version) override ``service_create`` or
    ``service_update``. An ``AppError`` from a save shows the message and the form again, with
    nothing saved; from a delete, a message, and the other selected rows are still deleted.
    """

    create_service: Callable[..., Any] | None = None
    update_service: Callable[..., Any] | None = None
    delete_service: Callable[..., Any] | None = None
    service_fields: Sequence[str] = ()
    service_arg: str = ""

    def _service(self, name: str) -> Callable[..., Any] | None:
        # Read from the class: a plain function stays a function (not bound to the admin).
        return getattr(type(self), name)

    def _row_kwarg(self, obj) -> dict[str, Any]:
        return {self.service_arg or self.model._meta.model_name: obj}

    def service_values(self, request, form) -> dict[str, Any]:
        data = form.cleaned_data
        return {name: data[name] for name in self.service_fields if name in data}

    def service_create(self, request, form):
        """Create the row through ``create_service``; returns it."""
        return self._service("create_service")(**self.service_values(request, form))

    def service_update(self, request, obj, form) -> None:
        """Apply the changed ``service_fields`` through ``update_service``."""
        values = self.service_values(request, form)
        changes = {name: value for name, value in values.items() if name in form.changed_data}
        update = self._service("update_service")
        if changes and update is not None:
            fresh = self.model._default_manager.get(pk=obj.pk)
            update(**self._row_kwarg(fresh), **changes)

    def save_model(self, request, obj, form, change):
        if change:
            self.service_update(request, obj, form)
        else:
            created = self.service_create(request, form)
            obj.pk = created.pk
            obj._state.adding = False
        obj.refresh_from_db()

    def has_delete_permission(self, request, obj=None):
        # No delete service, no delete: the admin never deletes a row behind the services' back.
        if self._service("delete_service") is None:
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request, obj):
        try:
            self._service("delete_service")(**self._row_kwarg(obj))
        except AppError as exc:
            self.message_user(request, " ".join(app_error_text(exc)), messages.ERROR)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    # Service field names → form field names, when they differ (``definition`` → its editor).
    service_error_aliases: dict[str, str] = {}
    # Where an error that names no form field shows (else at the top of the form).
    service_error_field: str | None = None

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        exc = getattr(request, "_podi_service_error", None)
        if exc is None:
            return form
        aliases, fallback = self.service_error_aliases, self.service_error_field

        class WithServiceError(form):
            def clean(self):
                data = super().clean()
                form_add_app_error(self, exc, field=fallback, aliases=aliases)
                return data

        WithServiceError.__name__ = form.__name__
        return WithServiceError

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except AppError as exc:
            # Raised by a service inside Django's transaction, which is rolled back. Show the
            # form again with what the operator typed and the error at its field: the form is
            # validated once more, now carrying the error, so nothing is saved.
            if request.method != "POST" or getattr(request, "_podi_service_error", None):
                self.message_user(request, " ".join(app_error_text(exc)), messages.ERROR)
                return HttpResponseRedirect(request.get_full_path())
            request._podi_service_error = exc
            for upload in request.FILES.values():
                upload.seek(0)
            return super().changeform_view(request, object_id, form_url, extra_context)
