"""The console dashboard's summary: executor health, abilities nobody serves, keys running out."""

from __future__ import annotations

from datetime import timedelta

from django import template
from django.db.models import Count, F, Q
from django.utils import timezone

from integrations.models import Executor, HealthStatus, VendorApiKey
from integrations.selectors import abilities_without_enabled_binding

register = template.Library()

LIMIT = 10


@register.simple_tag
def console_summary() -> dict:
    now = timezone.now()
    today = now.date()
    by_status = dict(
        Executor.objects.filter(enabled=True)
        .values_list("health_status")
        .annotate(n=Count("id"))
        .values_list("health_status", "n")
    )
    unhealthy = list(
        Executor.objects.filter(enabled=True, health_status=HealthStatus.UNHEALTHY).order_by(
            "name"
        )[:LIMIT]
    )
    orphans = list(
        abilities_without_enabled_binding().filter(status="active").order_by("code")[:LIMIT]
    )
    keys = list(
        VendorApiKey.objects.filter(status=VendorApiKey.Status.ACTIVE)
        .filter(
            Q(daily_quota__gt=0, usage_date=today, used_today__gte=F("daily_quota") * 0.8)
            | Q(expires_at__lte=now + timedelta(days=7))
        )
        .order_by("provider", "name")[:LIMIT]
    )
    return {
        "healthy": by_status.get(HealthStatus.HEALTHY, 0),
        "unhealthy_count": by_status.get(HealthStatus.UNHEALTHY, 0),
        "unknown": by_status.get(HealthStatus.UNKNOWN, 0),
        "disabled": Executor.objects.filter(enabled=False).count(),
        "unhealthy": unhealthy,
        "orphans": orphans,
        "keys": [
            {
                "key": key,
                "used": key.usage_on(today),
                "expired": key.is_expired(now),
            }
            for key in keys
        ],
    }
