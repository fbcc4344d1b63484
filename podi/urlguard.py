"""The SSRF guard for URLs PODI calls or fetches on a user's behalf (callbacks, input URLs,
executor output URLs outside the executor's own origin).

http(s) only, no credentials in the URL; the host is resolved and every address must be global
(``ipaddress.is_global``) and outside ``DENIED_NETWORKS`` unless ``WEBHOOK_ALLOW_PRIVATE=true``.
A fetch connects to the address that was checked (no second DNS answer) and follows redirects
only by checking each hop again: use ``guarded_stream`` (or ``pinned_target`` for a one-off
request) rather than a bare httpx call.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from django.conf import settings

from podi.errors import validation_error

MAX_URL_LENGTH = 2000
MAX_REDIRECTS = 5

# Not global yet passed by older checks, or wrapping another address: refused outright.
DENIED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "100.64.0.0/10",  # carrier-grade NAT; Aliyun metadata is 100.100.100.200
        "2002::/16",  # 6to4: embeds any IPv4 address, private ones included
        "::/96",  # IPv4-compatible (deprecated)
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(Exception):  # noqa: N818 - reads as "the URL was refused"
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_public_address(address: str) -> bool:
    """True for an address PODI may connect to on a user's behalf."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif ip in NAT64:  # well-known NAT64 prefix: judge the IPv4 address it carries
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip.version == net.version and ip in net for net in DENIED_NETWORKS):
        return False
    return ip.is_global and not ip.is_multicast


def _split(url: str) -> tuple[Any, int] | str:
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
    return parts, port


def _resolve(host: str, port: int) -> list[str] | str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return "The host does not resolve."
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses or not all(is_public_address(a) for a in addresses):
        return "The host resolves to a private, loopback or link-local address."
    return addresses


def url_refusal(url: str) -> str | None:
    """Why ``url`` may not be called, or None when it may."""
    split = _split(url)
    if isinstance(split, str):
        return split
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return None
    parts, port = split
    resolved = _resolve(parts.hostname, port)
    return resolved if isinstance(resolved, str) else None


def pinned_target(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Resolve once, check every address, and aim at the first: ``(url to request, headers,
    httpx extensions)``, so DNS cannot answer differently between the check and the connect.

    Raises ``UrlRefused``. With ``WEBHOOK_ALLOW_PRIVATE`` the URL is returned as it is.
    """
    split = _split(url)
    if isinstance(split, str):
        raise UrlRefused(split)
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return url, {}, {}
    parts, port = split
    resolved = _resolve(parts.hostname, port)
    if isinstance(resolved, str):
        raise UrlRefused(resolved)
    address = resolved[0]
    literal = f"[{address}]" if ":" in address else address
    target = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1]}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return target, headers, extensions


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        return (
            parts.scheme,
            parts.hostname or "",
            parts.port or (443 if parts.scheme == "https" else 80),
        )
    except ValueError:
        return None


@contextlib.contextmanager
def guarded_stream(
    url: str,
    *,
    timeout: Any,
    headers: dict[str, str] | None = None,
    trusted_origin: str | None = None,
    verify: Any = True,
) -> Iterator[Any]:
    """``GET url`` as an ``httpx`` streamed response, each hop checked and pinned.

    Redirects are followed by hand (at most ``MAX_REDIRECTS``), each target checked again.
    ``trusted_origin`` (an operator-configured base URL, e.g. the executor's own) is fetched
    without the check, but a redirect away from it is checked like any other URL.
    Raises ``UrlRefused`` for a refused hop; ``httpx.HTTPError`` as httpx does.
    """

    trusted = _origin(trusted_origin) if trusted_origin else None
    current = url
    with httpx.Client(timeout=timeout, verify=verify, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            if trusted is not None and _origin(current) == trusted:
                target, extra, extensions = current, {}, {}
            else:
                target, extra, extensions = pinned_target(current)
            request = client.build_request(
                "GET", target, headers={**(headers or {}), **extra}, extensions=extensions
            )
            response = client.send(request, stream=True)
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = urljoin(current, location)
                    continue
                yield response
                return
            finally:
                response.close()
        raise UrlRefused(f"More than {MAX_REDIRECTS} redirects.")


def validate_callback_url(url: str, *, field: str = "callbackUrl") -> str:
    reason = url_refusal(url)
    if reason:
        raise validation_error({field: [reason]})
    return url
