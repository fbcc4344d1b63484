"""Media housekeeping run by the periodic reconciler."""

from media_app.services import media_pending_sweep
from podi.reconcile import reconcile_step


@reconcile_step
def sweep_pending_uploads() -> dict[str, int]:
    """Complete or expire upload grants left pending past their window (lost OSS callbacks)."""
    return media_pending_sweep()
