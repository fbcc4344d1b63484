"""Wallet test helpers: a snapshot of every wallet row, and a recorder of published events."""

from __future__ import annotations

import pytest

from podi.realtime.events import register_sink, unregister_sink
from wallet.models import Account, Hold, LedgerEntry


def wallet_snapshot() -> dict:
    """Everything the wallet stores, to assert that a refused request changed nothing."""
    return {
        "accounts": sorted(Account.objects.values_list("pk", "balance", "frozen")),
        "holds": sorted(Hold.objects.values_list("public_id", "status", "deducted", "released")),
        "entries": sorted(LedgerEntry.objects.values_list("public_id", flat=True)),
    }


@pytest.fixture
def published():
    """Wallet events delivered to sinks (i.e. after commit), in order."""
    seen: list[dict] = []

    def sink(event):
        if event["type"] == "wallet.points":
            seen.append(event)

    register_sink(sink)
    yield seen
    unregister_sink(sink)
