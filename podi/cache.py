"""Django's Redis cache, with one client object per connection pool instead of one per call.

``django.core.cache.backends.redis.RedisCacheClient.get_client`` builds a new ``redis.Redis`` for
every cache operation; building one fills its response-callback table (hundreds of dictionary
writes), about a tenth of a millisecond each time, several times per API request (throttles,
the token deny list). A ``redis.Redis`` is safe to share between threads (its pool hands out
connections), so each pool gets one, made on first use.

The client (and so its connection pools) is also shared by every ``RedisCache`` instance of the
process with the same servers and options. Django keeps one cache instance per async context, and
a WebSocket consumer's context lives as long as its socket: with a client per instance, each open
socket held a connection pool and an idle Redis connection of its own (a thousand sockets, a
thousand Redis connections, and their objects in every full garbage collection).
"""

from __future__ import annotations

import threading

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient
from django.utils.functional import cached_property


class _SharedClientRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}
        self._clients_lock = threading.Lock()

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            with self._clients_lock:
                client = self._clients.get(index)
                if client is None:
                    client = super().get_client(key, write=write)
                    self._clients[index] = client
        return client


_process_clients: dict[tuple, _SharedClientRedisCacheClient] = {}
_process_clients_lock = threading.Lock()


class RedisCache(DjangoRedisCache):
    """``django.core.cache.backends.redis.RedisCache`` sharing its client objects."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = _SharedClientRedisCacheClient

    @cached_property
    def _cache(self):
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        client = _process_clients.get(key)
        if client is None:
            with _process_clients_lock:
                client = _process_clients.get(key)
                if client is None:
                    client = _process_clients[key] = self._class(self._servers, **self._options)
        return client
