"""Rate limits (429 ``RATE_LIMITED`` with ``Retry-After``): per user, per service key, per
client address for anonymous calls, and per address and per login name for login/register.

The client address is ``REMOTE_ADDR`` unless ``TRUSTED_PROXIES`` (DRF's ``NUM_PROXIES``) says how
many proxies in front of PODI append to ``X-Forwarded-For``: then it is the entry that many from
the right, the one the outermost trusted proxy saw. Entries further left are the client's word.
"""

import hashlib

from rest_framework.throttling import SimpleRateThrottle

from podi.auth import service_key_of


class PrincipalRateThrottle(SimpleRateThrottle):
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


class LoginAddressThrottle(SimpleRateThrottle):
    """Login and register attempts per client address (``RATE_LIMIT_LOGIN``)."""

    scope = "login"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class LoginNameThrottle(SimpleRateThrottle):
    """Login attempts per login name, whatever the address (``RATE_LIMIT_LOGIN_NAME``)."""

    scope = "login_name"

    def get_cache_key(self, request, view):
        data = request.data if isinstance(request.data, dict) else {}
        name = data.get("username") or data.get("email")
        if not isinstance(name, str) or not name.strip():
            return None  # nothing to guess against; the address limit still applies
        ident = hashlib.sha256(name.strip().lower().encode()).hexdigest()[:40]
        return self.cache_format % {"scope": self.scope, "ident": ident}
