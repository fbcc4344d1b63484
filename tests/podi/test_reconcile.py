import contextlib
import logging
import threading
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from podi import reconcile
from podi.models import Lease
from podi.reconcile import LEASE_NAME, reconcile_step, registered_steps, run_pass
from podi.services import lease_acquire, lease_release

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _restore_steps():
    saved = list(reconcile._steps)
    yield
    reconcile._steps[:] = saved


def test_the_first_pass_on_a_fresh_database_runs():
    calls = []

    @reconcile_step
    def probe_step():
        calls.append(1)
        return "probed"

    results = run_pass()
    assert results is not None
    assert results[f"{__name__}.probe_step"] == "probed"
    assert calls == [1]
    assert f"{__name__}.probe_step" in registered_steps()


def test_a_lease_has_one_holder_until_released_or_expired():
    assert lease_acquire(name="job", holder="a", ttl=60) is True
    assert lease_acquire(name="job", holder="b", ttl=60) is False
    assert lease_acquire(name="job", holder="a", ttl=60) is True  # the holder extends it
    lease_release(name="job", holder="a")
    assert lease_acquire(name="job", holder="b", ttl=-1) is True  # taken, already expired
    assert lease_acquire(name="job", holder="c", ttl=60) is True


def test_concurrent_passes_never_overlap():
    inside, overlaps, outcomes = [], [], []
    gate = threading.Barrier(4)

    @reconcile_step
    def slow_step():
        inside.append(1)
        if len(inside) > 1:
            overlaps.append(1)
        threading.Event().wait(0.3)
        inside.pop()

    def run():
        gate.wait()
        try:
            outcomes.append(run_pass())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not overlaps
    assert sum(outcome is not None for outcome in outcomes) >= 1
    assert len(outcomes) == 4


def test_a_long_pass_keeps_its_lease_so_another_holder_cannot_start():
    """The lease lives 0.6 s; a 1.5 s step must still own it all along (renewed, not expired)."""

    other_took_it = []
    stop = threading.Event()

    def other_machine():

        try:
            while not stop.wait(0.05):
                if lease_acquire(name=LEASE_NAME, holder="other-machine", ttl=60):
                    other_took_it.append(1)
                    lease_release(name=LEASE_NAME, holder="other-machine")
        finally:
            connection.close()

    @reconcile_step
    def long_step():
        rival = threading.Thread(target=other_machine)
        rival.start()
        threading.Event().wait(1.5)
        stop.set()
        rival.join(5)
        return "done"

    results = run_pass(lease_ttl=0.6)
    assert results is not None
    assert results[f"{__name__}.long_step"] == "done"
    assert other_took_it == []
    # Released at the end: the other holder gets it now.
    assert lease_acquire(name=LEASE_NAME, holder="other-machine", ttl=60) is True


def test_a_pass_that_loses_its_lease_runs_no_further_step():

    ran = []

    @reconcile_step
    def stalls_past_its_lease():
        # As after a stall: the lease expired and another machine took it.
        Lease.objects.filter(name=LEASE_NAME).update(
            holder="other-machine", expires_at=timezone.now() + timedelta(seconds=60)
        )
        threading.Event().wait(0.8)  # the keeper (every 0.2 s) notices
        ran.append("first")

    @reconcile_step
    def must_not_run():
        ran.append("second")

    results = run_pass(lease_ttl=0.6)
    assert ran == ["first"]
    assert results[f"{__name__}.must_not_run"] == "skipped: lease lost"
    # The other machine's lease is untouched by our release.
    lease = Lease.objects.get(name=LEASE_NAME)
    assert lease.holder == "other-machine"


def test_each_pass_logs_its_holder_start_and_end_and_holds_a_short_lease(caplog, settings):
    """With RECONCILE_LOG_PASSES, operators (and the fleet test) see every pass as an interval
    with its holder; the lease lives RECONCILE_LEASE_TTL, so a reconciler killed mid-pass blocks
    the others only that long."""
    settings.RECONCILE_LOG_PASSES = True

    expiries = []

    @reconcile_step
    def read_lease():
        lease = Lease.objects.get(name=LEASE_NAME)
        expiries.append((lease.expires_at - timezone.now()).total_seconds())

    with caplog.at_level(logging.INFO, logger="podi.reconcile"):
        run_pass()
        run_pass()
    started = [r for r in caplog.records if r.getMessage() == "reconcile pass started"]
    ended = [r for r in caplog.records if r.getMessage() == "reconcile pass ended"]
    assert [r.holder for r in started] == [r.holder for r in ended]
    assert len({r.holder for r in started}) == 2  # one holder per pass
    for start, end in zip(started, ended, strict=True):
        assert start.startedAt == end.startedAt <= end.endedAt
        assert end.leaseLost is False
    assert ended[0].endedAt <= started[1].startedAt
    assert all(0 < left <= settings.RECONCILE_LEASE_TTL for left in expiries), expiries


def test_passes_are_logged_at_debug_unless_asked(caplog):
    with caplog.at_level(logging.INFO, logger="podi.reconcile"):
        run_pass()
    assert not [r for r in caplog.records if r.getMessage().startswith("reconcile pass ")]
    with caplog.at_level(logging.DEBUG, logger="podi.reconcile"):
        run_pass()
    passes = [r for r in caplog.records if r.getMessage().startswith("reconcile pass ")]
    assert [r.levelno for r in passes] == [logging.DEBUG, logging.DEBUG]


@pytest.mark.postgres
def test_a_release_the_database_refused_is_retried_before_the_next_pass():
    """Fleet fault 4: the pass's connection dies before it can release the lease. The next pass
    of this process releases it first, instead of every reconciler waiting for it to expire."""

    @reconcile_step
    def connection_cut():
        with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    assert run_pass() is not None
    stuck = Lease.objects.get(name=LEASE_NAME)
    assert stuck.holder != ""  # the release did not reach the database
    reconcile._steps.remove((f"{__name__}.connection_cut", connection_cut))
    assert run_pass() is not None  # not None: the lease was freed, not left to expire
    assert lease_acquire(name=LEASE_NAME, holder="other-machine", ttl=60) is True
