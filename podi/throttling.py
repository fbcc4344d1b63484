"""Rate limits per user and per service key (429 ``RATE_LIMITED`` with ``Retry-After``)."""

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
