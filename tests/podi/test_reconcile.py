import threading

import pytest
from django.db import connection

from podi import reconcile
from podi.reconcile import reconcile_step, registered_steps, run_pass
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
