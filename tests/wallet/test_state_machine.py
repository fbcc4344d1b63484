"""Random operation sequences against a model of the wallet; invariants 1–2 after every step."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from podi.errors import AppError
from tests.conftest import make_user
from tests.wallet.conftest import wallet_snapshot
from tests.wallet.invariants import assert_wallet_invariants
from wallet.models import Account, Hold
from wallet.selectors import account_statistics, hold_get
from wallet.services import (
    hold_confirm,
    hold_freeze,
    hold_release,
    holds_expire,
    wallet_adjust,
    wallet_grant,
)

pytestmark = pytest.mark.django_db

_users = itertools.count()
TASKS = [f"tsk_{i}" for i in range(6)]


class WalletMachine(RuleBasedStateMachine):
    @initialize()
    def new_account(self):
        self.user = make_user(f"sm{next(_users)}")
        self.balance = 0
        self.granted = 0
        self.charged = 0
        self.adjusted = 0
        self.references: dict[str, int] = {}
        self.holds: dict[str, dict] = {}  # task_id → {id, points, status, expires_at}

    def refused(self, code: str, call) -> None:
        before = wallet_snapshot()
        with pytest.raises(AppError) as caught:
            call()
        assert caught.value.code == code
        assert wallet_snapshot() == before

    @property
    def frozen(self) -> int:
        return sum(h["points"] for h in self.holds.values() if h["status"] == "held")

    @rule(points=st.integers(1, 400), reference=st.sampled_from(["", "", "ref-a", "ref-b"]))
    def grant(self, points, reference):
        known = self.references.get(reference) if reference else None
        if known is not None and known != points:
            self.refused(
                "WALLET_GRANT_CONFLICT",
                lambda: wallet_grant(user=self.user, points=points, reference=reference),
            )
            return
        wallet_grant(user=self.user, points=points, reference=reference)
        if known is None:
            self.balance += points
            self.granted += points
            if reference:
                self.references[reference] = points

    @rule(task=st.sampled_from(TASKS), points=st.integers(1, 300), ttl=st.sampled_from([60, 600]))
    def freeze(self, task, points, ttl):
        call = lambda: hold_freeze(user=self.user, task_id=task, points=points, ttl_seconds=ttl)  # noqa: E731
        existing = self.holds.get(task)
        if existing is not None and existing["points"] != points:
            self.refused("WALLET_HOLD_CONFLICT", call)
        elif existing is not None:
            hold, created = call()
            assert (hold.public_id, created) == (existing["id"], False)
        elif self.balance < points:
            self.refused("WALLET_INSUFFICIENT", call)
        else:
            hold, created = call()
            assert created
            self.balance -= points
            self.holds[task] = {
                "id": hold.public_id,
                "points": points,
                "status": "held",
                "expires_at": hold.expires_at,
            }

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), partial=st.booleans())
    def confirm(self, data, partial):
        task = data.draw(st.sampled_from(sorted(self.holds)))
        model = self.holds[task]
        points = data.draw(st.integers(0, model["points"])) if partial else None
        call = lambda: hold_confirm(hold=hold_get(hold_id=model["id"]), points=points)  # noqa: E731
        if model["status"] == "released":
            self.refused("WALLET_HOLD_SETTLED", call)
        elif model["status"] == "expired":
            self.refused("WALLET_HOLD_EXPIRED", call)
        elif model["status"] == "confirmed":
            hold = call()
            assert (hold.status, hold.deducted) == ("confirmed", model["deducted"])
        else:
            hold = call()
            charge = model["points"] if points is None else points
            assert (hold.status, hold.deducted, hold.released) == (
                "confirmed",
                charge,
                model["points"] - charge,
            )
            model.update(status="confirmed", deducted=charge)
            self.charged += charge
            self.balance += model["points"] - charge

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data):
        task = data.draw(st.sampled_from(sorted(self.holds)))
        model = self.holds[task]
        call = lambda: hold_release(hold=hold_get(hold_id=model["id"]))  # noqa: E731
        if model["status"] == "confirmed":
            self.refused("WALLET_HOLD_SETTLED", call)
            return
        hold = call()
        if model["status"] == "held":
            model["status"] = "released"
            self.balance += model["points"]
        assert hold.status == model["status"]

    @rule(later=st.sampled_from([0, 120, 700]))
    def expire(self, later):
        now = timezone.now() + timedelta(seconds=later)
        due = [h for h in self.holds.values() if h["status"] == "held" and h["expires_at"] <= now]
        assert holds_expire(now=now) == len(due)
        for model in due:
            model["status"] = "expired"
            self.balance += model["points"]

    @rule(points=st.integers(-300, 300).filter(bool))
    def adjust(self, points):
        call = lambda: wallet_adjust(user=self.user, points=points, reason="sm", staff_user=None)  # noqa: E731
        if self.balance + points < 0:
            self.refused("WALLET_INSUFFICIENT", call)
        else:
            call()
            self.balance += points
            self.adjusted += points

    def teardown(self):
        # Leave no held hold behind: holds_expire is fleet-wide, and the next example's counts
        # must only see its own account.
        for model in getattr(self, "holds", {}).values():
            if model["status"] == "held":
                hold_release(hold=hold_get(hold_id=model["id"]))

    @invariant()
    def wallet_matches_the_model_and_the_invariants_hold(self):
        account = Account.objects.filter(user=self.user).first()
        if account is None:
            assert self.balance == 0 and not self.holds
            return
        account = assert_wallet_invariants(account)
        assert (account.balance, account.frozen) == (self.balance, self.frozen)
        statuses = dict(Hold.objects.filter(account=account).values_list("task_id", "status"))
        assert statuses == {task: h["status"] for task, h in self.holds.items()}
        stats = account_statistics(account=account)
        assert (stats["totalGranted"], stats["totalSpent"], stats["totalAdjusted"]) == (
            self.granted,
            self.charged,
            self.adjusted,
        )
        assert account.balance + account.frozen == self.granted - self.charged + self.adjusted


WalletMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_wallet_state_machine():
    run_state_machine_as_test(WalletMachine, settings=WalletMachine.TestCase.settings)
