"""The SSRF guard: which addresses pass, and fetching with pinned, re-checked hops (loopback)."""

from __future__ import annotations

import httpx
import pytest
from aiohttp import web

from podi.urlguard import UrlRefused, guarded_stream, is_public_address, url_refusal
from tests.servers.base import LoopbackServer


@pytest.mark.parametrize(
    "address",
    [
        "100.100.100.200",  # Aliyun metadata (carrier-grade NAT range)
        "100.64.0.1",
        "169.254.169.254",
        "127.0.0.1",
        "10.0.0.1",
        "192.168.1.1",
        "0.0.0.0",  # noqa: S104
        "198.18.0.1",
        "224.0.0.1",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:100.100.100.200",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 wrapping 169.254.169.254
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
        "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
        "::a00:1",  # IPv4-compatible
        "not an address",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert is_public_address(address) is False


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_pass(address):
    assert is_public_address(address) is True


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200/latest/meta-data/",
        "http://[2002:7f00:1::]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_urls_on_wrapped_or_metadata_addresses_are_refused(url, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    assert url_refusal(url) is not None


class Metadata(LoopbackServer):
    """Stands in for a cloud metadata endpoint that must never be reached."""

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/latest/meta-data", self.secret)

    async def secret(self, request):
        return web.Response(text="instance-credentials")


class Executor(LoopbackServer):
    """An operator-configured executor whose output URL redirects somewhere else."""

    target = ""

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/out.png", self.out)
        app.router.add_get("/moved", self.moved)

    async def out(self, request):
        return web.Response(body=b"png-bytes", content_type="image/png")

    async def moved(self, request):
        raise web.HTTPFound(self.target)


@pytest.fixture
def servers():
    with Metadata() as metadata, Executor() as executor:
        executor.target = f"{metadata.url}/latest/meta-data"
        yield executor, metadata


def read(url: str, **kwargs) -> bytes:
    with guarded_stream(url, timeout=5, **kwargs) as response:
        return response.read()


def test_trusted_origin_is_fetched_but_a_redirect_away_from_it_is_checked(servers, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    executor, metadata = servers
    assert read(f"{executor.url}/out.png", trusted_origin=executor.url) == b"png-bytes"
    with pytest.raises(UrlRefused, match="private"):
        read(f"{executor.url}/moved", trusted_origin=executor.url)
    assert metadata.requests == []


def test_an_untrusted_loopback_url_is_refused_before_connecting(servers, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    executor, metadata = servers
    with pytest.raises(UrlRefused):
        read(f"{metadata.url}/latest/meta-data", trusted_origin=executor.url)
    with pytest.raises(UrlRefused):
        read(f"http://localhost:{metadata.port}/latest/meta-data")
    assert metadata.requests == []


def test_with_private_addresses_allowed_redirects_are_followed(servers, settings):
    """The same requests pass when the guard is off: the refusals above are the guard's."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    executor, metadata = servers
    assert read(f"{executor.url}/moved") == b"instance-credentials"
    assert len(metadata.requests) == 1


def test_redirect_loops_stop(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True

    class Loop(LoopbackServer):
        def setup_routes(self, app):
            app.router.add_get("/again", self.again)

        async def again(self, request):
            raise web.HTTPFound("/again")

    with Loop() as loop, pytest.raises(UrlRefused, match="redirects"):
        read(f"{loop.url}/again")
    assert len(loop.requests) == 6


def test_a_plain_httpx_error_still_surfaces(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    with pytest.raises(httpx.ConnectError):
        read("http://127.0.0.1:9/")
