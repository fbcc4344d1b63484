"""Wallet housekeeping run by the periodic reconciler."""

from podi.reconcile import reconcile_step
from wallet.services import holds_expire


@reconcile_step
def expire_holds() -> int:
    """Release every hold past its ``expiresAt`` (entry ``expire``); returns how many."""
    return holds_expire()
