"""The SSRF guard for URLs PODI will call on a user's behalf (callbacks, input URLs).

http(s) only; the host is resolved and every address must be public unless
``WEBHOOK_ALLOW_PRIVATE=true``. Delivery re-checks at send time (DNS can change).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

from podi.errors import validation_error

MAX_URL_LENGTH = 2000


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def url_refusal(url: str) -> str | None:
    """Why ``url`` may not be called, or None when it may."""
    if len(url) > MAX_URL_LENGTH:
        return f"At most {MAX_URL_LENGTH} characters."
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "Not a valid URL."
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "Must be an http(s) URL with a host."
    if parts.username or parts.password:
        return "Credentials in the URL are not allowed."
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return "The host does not resolve."
    addresses = {info[4][0] for info in infos}
    if not addresses or not all(_is_public(a) for a in addresses):
        return "The host resolves to a private, loopback or link-local address."
    return None


def validate_callback_url(url: str, *, field: str = "callbackUrl") -> str:
    reason = url_refusal(url)
    if reason:
        raise validation_error({field: [reason]})
    return url
