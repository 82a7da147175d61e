"""Fetching a URL that a stranger chose: public addresses only, no credentials, bounded.

A node fetches the actor document of whoever signs a request, to get the key that checks the signature.
For listed peers and actors it already knows, the admin chose (or accepted) the URL. For anyone else the
URL comes straight from the request, so a fetch would let any sender make the node reach into its own
network (the cloud metadata service, an admin panel on loopback, a port scan). Such fetches are made only
when the admin opened follow requests to strangers, and then only through this module:

- http(s) only, the host named by the actor id itself, no user info (it would become an Authorization
  header), no redirects (each hop would need the same checks; the signed client never follows one);
- every address the host resolves to must be public: no loopback, private, shared, link-local, multicast,
  reserved or unspecified range, checked on the addresses the connection really uses (the resolver of the
  connection, not a separate lookup that DNS could answer differently a moment later);
- a small size and time cap.

``allow_loopback`` exists for the test suite, whose peers all live on 127.0.0.1; it never opens private
ranges. It is read from the environment variable ``VERDICT_NODE_TEST_ALLOW_LOOPBACK=1``.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

#: Environment switch for tests: lets stranger fetches reach 127.0.0.0/8 and ::1, nothing else.
TEST_ALLOW_LOOPBACK_ENV = "VERDICT_NODE_TEST_ALLOW_LOOPBACK"

#: An actor document is a few KB; Mastodon's largest are well under this.
MAX_DOCUMENT_BYTES = 256 * 1024
#: The whole fetch of a stranger's document, connect included.
FETCH_SECONDS = 5.0


class FetchRefused(Exception):
    """A URL or address this node will not fetch on a stranger's word (the message is for the log only)."""


def allow_loopback_from_env() -> bool:
    return os.environ.get(TEST_ALLOW_LOOPBACK_ENV) == "1"


def is_public_address(address: str, *, allow_loopback: bool = False) -> bool:
    """True for a globally routable unicast address. IPv4-mapped IPv6 is judged as the IPv4 it maps."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return allow_loopback
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_unspecified
                                 or ip.is_private)


def check_stranger_url(url: str, expected_host: str | None = None, *, allow_loopback: bool = False) -> None:
    """Refuse a URL that is not plain http(s) on the expected host, or that names a non-public IP literal
    (those never reach the resolver). Raises FetchRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchRefused(f"{url[:200]!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"{url[:200]!r}: only http(s) URLs are fetched")
    if "@" in parts.netloc:
        raise FetchRefused(f"{url[:200]!r}: URLs with user info are never fetched")
    if expected_host is not None and parts.hostname != expected_host.lower():
        raise FetchRefused(f"{url[:200]!r} is not on the actor's own host {expected_host}")
    if port == 0:
        raise FetchRefused(f"{url[:200]!r}: port 0")
    try:
        ipaddress.ip_address(parts.hostname.strip("[]"))
    except ValueError:
        return  # a name: the resolver below checks what it resolves to
    if not is_public_address(parts.hostname.strip("[]"), allow_loopback=allow_loopback):
        raise FetchRefused(f"{url[:200]!r}: {parts.hostname} is not a public address")


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses the host if any address is not public (one
    private answer among public ones is how DNS rebinding hides)."""

    def __init__(self, *, allow_loopback: bool = False) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self.allow_loopback = allow_loopback

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        bad = [r["host"] for r in results if not is_public_address(r["host"], allow_loopback=self.allow_loopback)]
        if bad or not results:
            raise OSError(f"{host} resolves to a non-public address ({', '.join(bad) or 'none'})")
        return results

    async def close(self) -> None:
        await self._inner.close()


def stranger_connector(*, allow_loopback: bool = False) -> Any:
    """The connector of the client that fetches strangers' documents."""
    return aiohttp.TCPConnector(resolver=PublicOnlyResolver(allow_loopback=allow_loopback), limit=16,
                                limit_per_host=2, use_dns_cache=False)
