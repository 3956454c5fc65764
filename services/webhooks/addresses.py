"""Which addresses a production delivery may reach: public ones only, checked after DNS resolution.

A production tenant's URL (and every URL of a production deployment) must not point inside our
network: an address literal is checked before connecting, and a name is checked on what it
resolves to, at connect time, by the resolver the production HTTP session uses.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult


class RefusedAddress(OSError):
    def __init__(self, message: str) -> None:
        # errno and strerror set, so aiohttp's connection error carries the reason.
        super().__init__(errno.EACCES, message)


def check_public(ip_text: str) -> None:
    """Raises RefusedAddress for a private, loopback, link-local or multicast address; ValueError
    when `ip_text` is not an address literal (a name)."""
    ip = ipaddress.ip_address(ip_text)
    if not ip.is_global or ip.is_multicast:
        raise RefusedAddress(f"refused: {ip_text} is not a public address")


def literal_address(host: str) -> str | None:
    """The address a URL's host spells, or None for a name. Besides the canonical forms this reads
    the legacy IPv4 shorthands (`127.1`, `2130706433`, `0x7f.1`) as the system resolver does, so
    that our refusal never depends on whether the HTTP client happens to reject them first."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or not all(c.isalnum() or c == "." for c in host) or not host.isascii():
        return None
    try:
        return str(ipaddress.IPv4Address(socket.inet_aton(host)))
    except OSError:
        return None  # a name: the resolver checks what it resolves to


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses any private, loopback or link-local answer, so a
    DNS name cannot point a production delivery inside our network."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            check_public(entry["host"])
        return found

    async def close(self) -> None:
        await self._inner.close()
