"""The vendor API key an adapter calls with: pick the executor's usable key, count each call.

Below the adapters (which call these) and below ``integrations.services`` (which builds clients
for health checks), so neither imports the other's module back. Creating, editing and deleting keys
are operator writes in ``integrations.services``.
"""

from __future__ import annotations

from django.db.models import F, Q
from django.utils import timezone

from integrations.models import Executor, VendorApiKey


def api_key_pick(*, executor: Executor) -> VendorApiKey | None:
    """The executor's first active, unexpired, non-exhausted key (highest priority first)."""
    now = timezone.now()
    today = now.date()
    keys = (
        executor.api_keys.filter(status=VendorApiKey.Status.ACTIVE)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .order_by("-priority", "id")
    )
    for key in keys:
        if not key.is_exhausted(today):
            return key
    return None


def api_key_record_use(*, key: VendorApiKey) -> bool:
    """Count one call on the key for today (UTC). Guarded updates, safe under concurrency:
    False (nothing counted) when today's quota is used up."""
    now = timezone.now()
    today = now.date()
    under_quota = Q(daily_quota__isnull=True) | Q(used_today__lt=F("daily_quota"))
    fresh_day = Q(usage_date__isnull=True) | ~Q(usage_date=today)
    # A new day: start again at 1 (one writer wins; the others fall through to the increment).
    rows = (
        VendorApiKey.objects.filter(fresh_day, pk=key.pk)
        .filter(Q(daily_quota__isnull=True) | Q(daily_quota__gte=1))
        .update(used_today=1, usage_date=today, last_used_at=now)
    )
    if not rows:
        rows = VendorApiKey.objects.filter(under_quota, pk=key.pk, usage_date=today).update(
            used_today=F("used_today") + 1, last_used_at=now
        )
    key.refresh_from_db(fields=["used_today", "usage_date", "last_used_at"])
    return rows == 1
