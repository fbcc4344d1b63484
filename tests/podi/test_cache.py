"""The Redis cache backend shares one client object per connection pool (podi/cache.py)."""

from __future__ import annotations

import os
import threading
import uuid

from podi.cache import RedisCache
from podi.ids import new_id


def redis_cache() -> RedisCache:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    return RedisCache(url, {"KEY_PREFIX": f"podi-test-cache-{uuid.uuid4().hex}"})


def test_the_cache_works_and_builds_one_client():
    cache = redis_cache()
    try:
        cache.set("a", {"n": 1}, 30)
        assert cache.get("a") == {"n": 1}
        assert cache.get_many(["a", "b"]) == {"a": {"n": 1}}
        assert cache.add("c", 1, 30) is True
        assert cache.incr("c") == 2
        clients = set()

        def use():
            for _ in range(50):
                cache.get("a")
                clients.add(id(cache._cache.get_client(write=False)))

        threads = [threading.Thread(target=use) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(clients) == 1
        assert cache._cache.get_client(write=True) is cache._cache.get_client(write=False)
    finally:
        cache.delete_many(["a", "b", "c"])
        cache.close()


def test_ids_have_their_prefix_and_24_characters_of_a_to_z_and_0_to_9():
    ids = {new_id("tsk") for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        prefix, _, rest = value.partition("_")
        assert prefix == "tsk" and len(rest) == 24
        assert set(rest) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    # Every character appears in every position over enough draws (none is stuck).
    for position in (0, 12, 23):
        assert len({value[4 + position] for value in ids}) == 36
