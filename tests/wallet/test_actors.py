from datetime import timedelta

import pytest
from django.utils import timezone

from podi.reconcile import registered_steps
from podi.runtime import import_actor_modules
from tests.wallet.invariants import assert_wallet_invariants
from wallet.actors import expire_holds
from wallet.models import Hold
from wallet.services import hold_freeze, wallet_grant

pytestmark = pytest.mark.django_db


def test_expiry_is_a_reconciler_step(owner):
    import_actor_modules()
    assert "wallet.actors.expire_holds" in registered_steps()
    wallet_grant(user=owner, points=100)
    hold, _ = hold_freeze(user=owner, task_id="t", points=40)
    Hold.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_holds() == 1
    assert expire_holds() == 0
    hold.refresh_from_db()
    assert hold.status == "expired"
    account = assert_wallet_invariants(owner)
    assert (account.balance, account.frozen) == (100, 0)
