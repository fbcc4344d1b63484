"""Platform housekeeping run by the reconciler."""

from podi.idempotency import purge_expired_idempotency_records
from podi.reconcile import reconcile_step


@reconcile_step
def purge_idempotency_records() -> int:
    return purge_expired_idempotency_records()
