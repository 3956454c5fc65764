"""A lean HTTP/1.1 keep-alive client for the load generator.

The load generator shares this machine's two cores with the network it measures: through aiohttp's
client it used about a third of a core at 1,000 requests a second, CPU taken from the gateway and
the ledger. This client does only what the benchmark needs (one request at a time per connection,
`Content-Length` bodies, keep-alive) and costs a fraction of that. Setup calls still go through
aiohttp.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode, urlsplit

HEADER_END = b"\r\n\r\n"
RESPONSE_HEAD_MAX = 64 * 1024
RESPONSE_BODY_MAX = 16 * 1024 * 1024


class HttpError(OSError):
    """A broken connection or a response this client does not understand."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(HEADER_END)
        if end < 0:
            if len(self.buffer) > RESPONSE_HEAD_MAX:
                waiter.set_exception(HttpError("response head too large"))
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            waiter.set_exception(HttpError(f"bad status line {head[0]!r}"))
            return
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                waiter.set_exception(HttpError("chunked responses are not supported"))
                return
            elif name == "connection" and value.strip().lower() == "close":
                self.keep_alive = False
        if length is None or length > RESPONSE_BODY_MAX:
            waiter.set_exception(HttpError("a response without a usable Content-Length"))
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        waiter.set_result((status, body))


class Connection:
    """One persistent connection to `base_url`, reconnected after a failure; one request at a time."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError("the bench client speaks plain http only")
        self.host = url.hostname
        self.port = url.port or 80
        self.timeout_s = timeout_s
        self.protocol: _Protocol | None = None

    async def _connected(self) -> _Protocol:
        p = self.protocol
        if p is None or p.closed or not p.keep_alive:
            if p is not None and p.transport is not None:
                p.transport.close()
            _, p = await asyncio.get_running_loop().create_connection(_Protocol, self.host, self.port)
            self.protocol = p
        return p

    async def request(
        self, method: str, path: str, *, headers: dict[str, str], body: Any = None, params: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body). Raises `HttpError` (an OSError) or TimeoutError; the connection is then
        dropped and the next request opens a new one."""
        if params:
            path = f"{path}?{urlencode(params)}"
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(payload)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        try:
            async with asyncio.timeout(self.timeout_s):
                p = await self._connected()
                p.waiter = asyncio.get_running_loop().create_future()
                assert p.transport is not None
                p.transport.write(raw)
                return await p.waiter
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None
