"""The Redis cache backend shares one client object per connection pool (podi/cache.py)."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

from asgiref.sync import async_to_sync, sync_to_async
from django.core.cache import CacheHandler

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


def test_caches_of_different_async_contexts_share_one_client_and_its_connections():
    """Django keeps a cache instance per async context; a WebSocket consumer's context lives as
    long as its socket. Fifty sockets' contexts must not hold fifty Redis pools and connections."""
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    prefix = f"podi-test-cache-{uuid.uuid4().hex}"
    handler = CacheHandler(
        {"default": {"BACKEND": "podi.cache.RedisCache", "LOCATION": url, "KEY_PREFIX": prefix}}
    )

    def use() -> tuple[int, int]:
        cache = handler["default"]
        cache.set("k", 1, 30)
        assert cache.get("k") == 1
        return id(cache), id(cache._cache)

    async def sockets():
        async def one_socket():
            return await sync_to_async(use, thread_sensitive=False)()

        return await asyncio.gather(*(asyncio.create_task(one_socket()) for _ in range(50)))

    # The process may share this client already (same server, same options): count what the
    # fifty contexts add to its pool. (Not through ``handler``: a cache made in this context
    # would be inherited by the fifty.)
    shared = RedisCache(url, {"KEY_PREFIX": prefix})._cache._pools.get(0)
    created_before = shared._created_connections if shared is not None else 0
    seen = async_to_sync(sockets)()
    pool = handler["default"]._cache._get_connection_pool(write=True)  # as used by the contexts
    caches, clients = {c for c, _ in seen}, {k for _, k in seen}
    assert len(caches) > 1  # Django did make one cache per context: the case this guards
    assert len(clients) == 1
    assert pool._created_connections - created_before <= 10
    handler["default"].delete("k")
    # Other servers or options get a client of their own.
    other = RedisCache(url, {"KEY_PREFIX": prefix, "OPTIONS": {"db": 1}})
    assert other._cache is not handler["default"]._cache
