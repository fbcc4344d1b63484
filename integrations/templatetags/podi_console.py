"""The console dashboard's extra lists: abilities nobody serves, vendor keys running out (executor
health is in the operations tiles, podi/console)."""

from __future__ import annotations

from datetime import timedelta

from django import template
from django.db.models import F, Q
from django.utils import timezone

from integrations.models import VendorApiKey
from integrations.selectors import abilities_without_enabled_binding

register = template.Library()

LIMIT = 10


@register.simple_tag
def console_summary() -> dict:
    now = timezone.now()
    today = now.date()
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
