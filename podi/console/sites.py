"""The admin site: the operations dashboard as its index, the noise hidden from non-superusers."""

from __future__ import annotations

from django.contrib import admin
from django.http import JsonResponse
from django.urls import path

from podi.console.selectors import ops_overview
from podi.console.views import dashboard_context, dashboard_fragment

# (app label, model name or "*"): housekeeping tables an operator never needs to browse.
NOISE = {
    ("django_dramatiq", "*"),  # "Django Dramatiq › Tasks": broker bookkeeping, not PODI tasks
    ("token_blacklist", "*"),  # JWT refresh-token bookkeeping
    ("podi", "idempotencyrecord"),
    ("media_app", "uploadkeyversion"),
}


def is_noise(app_label: str, model_name: str) -> bool:
    return (app_label, "*") in NOISE or (app_label, model_name) in NOISE


class ConsoleSite(admin.AdminSite):
    site_header = "PODI console"
    site_title = "PODI"
    index_title = "Operations"
    # PODI has no public site; the "View site" link would lead to a 404.
    site_url = None

    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        if request.user.is_superuser:
            return apps
        kept = []
        for app in apps:
            models = [
                m for m in app["models"] if not is_noise(app["app_label"], m["object_name"].lower())
            ]
            if models:
                kept.append({**app, "models": models})
        return kept

    def index(self, request, extra_context=None):

        return super().index(request, {**dashboard_context(), **(extra_context or {})})

    def get_urls(self):
        return [
            path("ops.json", self.admin_view(self.ops_json), name="ops_summary"),
            *super().get_urls(),
        ]

    def ops_json(self, request):
        """The dashboard's numbers (staff only: ``admin_view``), polled by the index page."""

        body = ops_overview()
        if request.GET.get("fragment"):
            body["html"] = dashboard_fragment(request)
        response = JsonResponse(body)
        response["Cache-Control"] = "no-store"
        return response
