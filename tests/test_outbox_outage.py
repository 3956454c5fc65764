"""The transactional outbox through an outage of NATS (a proxy in front of it that goes away and
comes back): the relay publishes everything once afterwards, and its task outlives the outage.

Each test has its own schema (migrated with the shared outbox migration), its own JetStream stream
and its own subject prefix, all removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
import pytest

from services.common import events
from tests.helpers import eventually
from tests.outbox_support import Outbox, emit_committed, outbox, relay_until_empty

__all__ = ["outbox"]  # the fixture, imported for this module's tests


class CuttableProxy:
    """A TCP proxy in front of NATS that can go away (its connections dropped, its port closed)
    and come back on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.append(writer)
        try:
            t_reader, t_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self.writers.append(t_writer)

            async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError):
                    while data := await a.read(65536):
                        b.write(data)
                        await b.drain()
                b.close()

            await asyncio.gather(pipe(reader, t_writer), pipe(t_reader, writer))
        finally:
            writer.close()
            self.handlers.discard(task)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in self.writers:
            w.close()
        # Every handler ends once its sockets are closed.
        await asyncio.wait_for(asyncio.gather(*self.handlers, return_exceptions=True), timeout=5)
        for w in self.writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()
        self.writers = []


async def test_after_an_outage_that_failed_rounds_the_relay_publishes_everything_once(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds that fail while NATS is unreachable (the client's reconnect buffer overflowing,
    publishes timing out) leave nothing behind that stops later rounds."""
    monkeypatch.setattr(events, "PUBLISH_TIMEOUT_S", 0.5)
    proxy = CuttableProxy(int(outbox.nats_url.rpartition(":")[2]))
    await proxy.start()
    # A small reconnect buffer, so that the outage overflows it quickly.
    nc = await nats.connect(
        f"nats://127.0.0.1:{proxy.port}",
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        pending_size=8 * 1024,
    )
    try:
        # Few slots for async publishes: a relay that leaked one per failed round would stall.
        relay = outbox.relay(js=nc.jetstream(publish_async_max_pending=6))
        ids = await emit_committed(outbox, [("ten_a", "x.y", {"i": i}) for i in range(5)])
        assert await relay.relay_once() == 5
        ids += await emit_committed(outbox, [("ten_a", "x.y", {"pad": "p" * 2000, "i": i}) for i in range(100)])
        await proxy.stop()
        failures = 0
        for _ in range(8):
            try:
                await relay.relay_once()
            except (TimeoutError, nats.errors.Error):
                failures += 1
        assert failures == 8
        assert await outbox.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 100
        await proxy.start()

        async def reconnected() -> bool:
            return bool(nc.is_connected)

        await eventually(reconnected, timeout_s=10)
        assert sum(await relay_until_empty(relay)) == 100
        got = [m.headers["Nats-Msg-Id"] if m.headers else "" for m in await outbox.consume_all()]
        assert sorted(got) == sorted(ids)  # each once: JetStream dropped any copy a failed round sent
    finally:
        await nc.close()
        await proxy.stop()


async def test_the_relay_task_outlives_an_outage_and_then_publishes_what_waited(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`run()` itself (the service's background task), not single rounds: NATS going away fails
    its rounds, which are logged and retried; the task never ends, and once NATS is back every
    event that waited is published, each once."""
    monkeypatch.setattr(events, "PUBLISH_TIMEOUT_S", 0.5)
    monkeypatch.setattr(events, "RELAY_BACKOFF_MAX_S", 0.5)  # so the test does not wait out 5 s
    proxy = CuttableProxy(int(outbox.nats_url.rpartition(":")[2]))
    await proxy.start()
    nc = await nats.connect(
        f"nats://127.0.0.1:{proxy.port}", connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    task = asyncio.ensure_future(outbox.relay(js=nc.jetstream()).run())
    try:
        with caplog.at_level(logging.WARNING, logger=events.log.name):
            ids = await emit_committed(outbox, [("ten_a", "x.y", {"i": i}) for i in range(5)])

            async def published(n: int) -> bool:
                return await outbox.stream_count() == n

            await eventually(lambda: published(5), timeout_s=10)
            await proxy.stop()
            ids += await emit_committed(outbox, [("ten_a", "x.y", {"i": i}) for i in range(5, 10)])

            async def a_round_failed() -> bool:
                return any("outbox-relay round failed" in r.getMessage() for r in caplog.records)

            await eventually(a_round_failed, timeout_s=15)
            assert not task.done(), "the relay task ended in the outage"
            assert await outbox.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 5
            await proxy.start()
            await eventually(lambda: published(10), timeout_s=15)
            assert not task.done()

            async def all_marked() -> bool:
                return await outbox.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0

            await eventually(all_marked, timeout_s=10)
        got = [m.headers["Nats-Msg-Id"] if m.headers else "" for m in await outbox.consume_all()]
        assert sorted(got) == sorted(ids)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()
        await proxy.stop()
