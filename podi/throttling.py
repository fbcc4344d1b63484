"""Rate limits (429 ``RATE_LIMITED`` with ``Retry-After``): per user, per service key, per
client address for anonymous calls, and per address and per login name for login/register.

The client address is ``REMOTE_ADDR`` unless ``TRUSTED_PROXIES`` (DRF's ``NUM_PROXIES``) says how
many proxies in front of PODI append to ``X-Forwarded-For``: then it is the entry that many from
the right, the one the outermost trusted proxy saw. Entries further left are the client's word.

Counting (ADR 0029): a moving window of the last ``rate`` requests, kept by the ``limits``
library. With ``REDIS_URL`` it is one Lua script per request, atomic across every web process;
embedded, it is in this process's memory. DRF's own ``SimpleRateThrottle`` read the whole
timestamp list from the cache and wrote it back (two round trips, the list pickled each way), and
two processes counting at once could each overwrite the other's hit.
"""

import functools
import hashlib
import time

from django.conf import settings
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from rest_framework.throttling import SimpleRateThrottle

from podi.auth import service_key_of


@functools.cache
def _storage() -> Storage:
    if settings.REDIS_URL:
        return RedisStorage(settings.REDIS_URL, key_prefix=f"{settings.REDIS_PREFIX}:rate")
    return MemoryStorage()


@functools.cache
def _limiter() -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(_storage())


@functools.cache
def _item(num_requests: int, duration: int) -> RateLimitItemPerSecond:
    return RateLimitItemPerSecond(num_requests, duration)


def reset_rate_limits() -> None:
    """Forget every count (tests; an operator lifting a lock-out by hand)."""
    _storage().reset()


class WindowRateThrottle(SimpleRateThrottle):
    """DRF's rate-string and cache-key conventions, counted by ``limits`` (see the module)."""

    def allow_request(self, request, view):
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        item = _item(self.num_requests, self.duration)
        if _limiter().hit(item, self.key):
            return True
        self.reset_at = _limiter().get_window_stats(item, self.key).reset_time
        return False

    def wait(self):
        return max(1.0, self.reset_at - time.time())


class PrincipalRateThrottle(WindowRateThrottle):
    scope = "principal"

    def get_cache_key(self, request, view):
        key = service_key_of(request)
        if key is not None:
            ident = f"key:{key.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            self.rate = self.THROTTLE_RATES.get("anon")
            self.num_requests, self.duration = self.parse_rate(self.rate)
            ident = f"anon:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class LoginAddressThrottle(WindowRateThrottle):
    """Login and register attempts per client address (``RATE_LIMIT_LOGIN``)."""

    scope = "login"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class LoginNameThrottle(WindowRateThrottle):
    """Login attempts per login name, whatever the address (``RATE_LIMIT_LOGIN_NAME``)."""

    scope = "login_name"

    def get_cache_key(self, request, view):
        data = request.data if isinstance(request.data, dict) else {}
        name = data.get("username") or data.get("email")
        if not isinstance(name, str) or not name.strip():
            return None  # nothing to guess against; the address limit still applies
        ident = hashlib.sha256(name.strip().lower().encode()).hexdigest()[:40]
        return self.cache_format % {"scope": self.scope, "ident": ident}
