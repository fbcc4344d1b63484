"""Rate limits count every request exactly once, however many threads and processes count at
the same time (ADR 0029): on Redis every thread here uses its own connection, as another web
process would; embedded, the count lives in this process."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from podi.throttling import PrincipalRateThrottle


class FortyPerMinute(PrincipalRateThrottle):
    rate = "40/min"


def _request(user_id: int):
    user = SimpleNamespace(pk=user_id, is_authenticated=True)
    return SimpleNamespace(user=user, auth=None, META={"REMOTE_ADDR": "192.0.2.1"}, headers={})


def test_concurrent_hits_never_pass_the_limit_nor_lose_a_count():
    request = _request(9001)
    allowed = []
    start = threading.Barrier(8)

    def hammer():
        start.wait()
        mine = sum(FortyPerMinute().allow_request(request, None) for _ in range(25))
        allowed.append(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 200 attempts against 40 a minute: exactly 40 pass. Read-modify-write counting (DRF's
    # cache throttle) lets more through when two threads read the same count.
    assert sum(allowed) == 40
    refused = FortyPerMinute()
    assert refused.allow_request(request, None) is False
    assert 1 <= refused.wait() <= 60


def test_each_principal_has_its_own_window():
    for _ in range(40):
        assert FortyPerMinute().allow_request(_request(9002), None)
    assert not FortyPerMinute().allow_request(_request(9002), None)
    assert FortyPerMinute().allow_request(_request(9003), None)
