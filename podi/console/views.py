"""Console views: the dashboard's context (links to filtered changelists), ``/metrics`` and the
favicon."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET

from integrations.agents.models import Agent
from integrations.models import Executor, WorkflowBinding
from podi.console.metrics import render_metrics
from podi.console.selectors import ops_overview
from tasks.models import Task
from wallet.models import LedgerEntry

FAVICON = Path(__file__).resolve().parent / "static" / "console" / "favicon.ico"


def changelist(model, **params) -> str:
    """``model`` is a model class or an ``"app_label.modelname"`` string (realtime's models are
    named, not imported: only realtime touches them)."""
    name = model if isinstance(model, str) else f"{model._meta.app_label}.{model._meta.model_name}"
    url = reverse("admin:{}_{}_changelist".format(*name.split(".")))
    return f"{url}?{urlencode(params)}" if params else url


def change(model, pk) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[pk])


def age_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} m {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} m"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def dashboard_links() -> dict[str, str]:
    today = timezone.now().date()
    return {
        "queued": changelist(Task, status__exact="queued"),
        "running": changelist(Task, status__exact="running"),
        "failedLastHour": changelist(Task, attention="failed_hour"),
        "succeeded": changelist(Task, attention="succeeded_recent"),
        "charged": changelist(
            LedgerEntry,
            type__exact="confirm",
            created_at__year=today.year,
            created_at__month=today.month,
            created_at__day=today.day,
        ),
        "executors": changelist(Executor),
        "bindings": changelist(WorkflowBinding, runnable="no"),
        "webhooks": changelist("realtime.webhookdelivery", attention="failing"),
        "agents": changelist(Agent, liveness="offline"),
    }


def dashboard_context() -> dict:
    ops = ops_overview()
    links = dashboard_links()
    oldest = ops["tasks"]["oldestQueued"]
    if oldest:
        oldest["url"] = change(Task, oldest["id"])
        oldest["ageText"] = age_text(oldest["ageSeconds"])
    for row in ops["executors"]:
        row["url"] = change(Executor, row["id"])
    for row in ops["bindings"]["items"]:
        row["url"] = change(WorkflowBinding, row["id"])
    for row in ops["webhooks"]["items"]:
        row["link"] = changelist("realtime.webhookdelivery", q=row["url"])
    for row in ops["agents"]["items"]:
        row["url"] = change(Agent, row["id"])
    return {"ops": ops, "ops_links": links}


def dashboard_fragment(request) -> str:
    return render_to_string("admin/console/ops.html", dashboard_context(), request=request)


# ------------------------------------------------------------------------------ favicon


@require_GET
@cache_control(max_age=86400, public=True)
def favicon(request):
    return HttpResponse(FAVICON.read_bytes(), content_type="image/x-icon")


# ------------------------------------------------------------------------------ /metrics


def _loopback(request) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def metrics_allowed(request) -> bool:
    """With ``METRICS_TOKEN`` set: ``Authorization: Bearer <token>`` (constant-time compare).
    Unset: loopback clients only."""
    token = settings.METRICS_TOKEN
    if not token:
        return _loopback(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


@require_GET
def metrics(request):

    if not metrics_allowed(request):
        response = HttpResponse("forbidden\n", status=403, content_type="text/plain")
        if settings.METRICS_TOKEN:
            response.status_code = 401
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = render_metrics()
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
