"""A TCP proxy between one service and PostgreSQL or NATS, to cut its connections on demand.

`cut(hold_s)` resets every open connection (SO_LINGER 0: the peer sees a reset, as when a
network path or a load balancer drops it) and, for `hold_s`, resets each new one as soon as it is
accepted; then it forwards again. The service must notice, reconnect and carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

CHUNK_BYTES = 65536
CONNECTIONS_MAX = 512  # a service's pool is 10; past this something leaks, and it is refused


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections_total = 0
        self.resets = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refuse_until = 0.0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self, hold_s: float) -> int:
        """Reset every connection now and every new one for `hold_s`; how many were open."""
        self._refuse_until = time.monotonic() + hold_s
        return self._reset_all()

    def _reset_all(self) -> int:
        pairs, self._pairs = self._pairs, set()
        for a, b in pairs:
            _reset(a)
            _reset(b)
        self.resets += len(pairs)
        return len(pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until or len(self._pairs) >= CONNECTIONS_MAX:
            self.resets += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), timeout=5.0)
        except (OSError, TimeoutError):
            _reset(writer)
            return
        self.connections_total += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(CHUNK_BYTES):
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            # One side ended: end both, so neither end waits on a half-open connection.
            if pair in self._pairs:
                self._pairs.discard(pair)
                for w in pair:
                    with contextlib.suppress(OSError, RuntimeError):
                        w.close()
