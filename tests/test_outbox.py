"""The transactional outbox against real PostgreSQL and NATS JetStream.

Each test has its own schema (migrated with the shared outbox migration), its own JetStream stream
and its own subject prefix, all removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.common import db, events
from services.common.stack import Stack
from tests.helpers import eventually

REPO_ROOT = Path(__file__).resolve().parent.parent
CREATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
ENVELOPE_FIELDS = {"event_id", "event_type", "created_at", "tenant_id", "data"}


@dataclasses.dataclass
class Outbox:
    database_url: str
    nats_url: str
    schema: str
    pool: asyncpg.Pool
    nc: NatsClient
    js: JetStreamContext
    stream: str
    prefix: str

    def relay(
        self, pool: asyncpg.Pool | None = None, js: JetStreamContext | None = None, **kw: Any
    ) -> events.OutboxRelay:
        settings: dict[str, Any] = {"batch_max": 100, "poll_interval_s": 0.05, "retention_s": 3600.0, **kw}
        return events.OutboxRelay(pool or self.pool, js or self.js, subject_prefix=self.prefix, **settings)

    async def rows(self) -> list[asyncpg.Record]:
        return list(await self.pool.fetch("SELECT * FROM outbox ORDER BY seq"))

    async def stream_count(self) -> int:
        info = await self.js.stream_info(self.stream)
        assert info.state is not None
        return int(info.state.messages)

    async def consume_all(self) -> list[Msg]:
        """Everything in the stream, in stream order, through a fresh pull consumer: as many
        messages as the stream holds (not "until a fetch times out", which a slow fetch would
        cut short), then the consumer must have nothing left."""
        expected = await self.stream_count()
        sub = await self.js.pull_subscribe(f"{self.prefix}.>", durable=None, stream=self.stream)
        got: list[Msg] = []
        try:
            while len(got) < expected:
                batch = await sub.fetch(min(256, expected - len(got)), timeout=5.0)
                for msg in batch:
                    await msg.ack()
                got.extend(batch)
            info = await sub.consumer_info()
            assert info.num_pending == 0, info
        finally:
            await sub.unsubscribe()
        return got


@pytest.fixture
async def outbox(stack: Stack) -> AsyncIterator[Outbox]:
    token = secrets.token_hex(4)
    url = stack.env["INVO_DATABASE_URL"]
    nats_url = stack.env["INVO_NATS_URL"]
    schema = f"t_{token}"
    conn = await asyncpg.connect(url)
    try:
        applied = await db.migrate(conn, schema, db.load_migrations("outbox", db.COMMON_MIGRATIONS / "outbox"))
        assert applied == 1
    finally:
        await conn.close()
    pool = await db.create_pool(
        url, schema, application_name=f"test-outbox-{token}", max_size=4, statement_timeout_ms=5000
    )
    nc = await events.connect_nats(nats_url, name=f"test-outbox-{token}")
    js = nc.jetstream()
    stream = f"T_OUTBOX_{token.upper()}"
    prefix = f"t_outbox_{token}.events"
    await events.ensure_stream(js, stream=stream, subject_prefix=prefix)
    try:
        yield Outbox(url, nats_url, schema, pool, nc, js, stream, prefix)
    finally:
        try:
            await js.delete_stream(stream)
        finally:
            await nc.close()
            await pool.close()
            await db.drop_schema(url, schema)


async def emit_committed(ob: Outbox, specs: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """Emit (tenant, type, data) events in one committed transaction; their ids, in order."""
    async with ob.pool.acquire() as conn, conn.transaction():
        return [await events.emit(conn, tenant_id=t, event_type=e, data=d) for t, e, d in specs]


async def relay_until_empty(relay: events.OutboxRelay, *, max_rounds: int = 100) -> list[int]:
    """relay_once() until it finds nothing; what each round sent."""
    rounds = []
    for _ in range(max_rounds):
        n = await relay.relay_once()
        rounds.append(n)
        if n == 0:
            return rounds
    raise AssertionError(f"the outbox never emptied: {rounds[:10]}...")


# -- emit -------------------------------------------------------------------------------------


async def test_emit_requires_a_transaction_and_commits_with_it(outbox: Outbox) -> None:
    async with outbox.pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await events.emit(conn, tenant_id="ten_a", event_type="payment.completed", data={"x": 1})
    assert await outbox.rows() == []

    data = {"payment_id": "pay_1", "amount": "12.50", "nested": {"ok": True, "list": [1, 2]}}
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    async with outbox.pool.acquire() as conn:
        async with conn.transaction():
            event_id = await events.emit(conn, tenant_id="ten_a", event_type="payment.completed", data=data)
            # Not visible to anyone else until the change it announces commits.
            assert await outbox.pool.fetchval("SELECT count(*) FROM outbox") == 0
    after = datetime.datetime.now(datetime.UTC)

    rows = await outbox.rows()
    assert len(rows) == 1
    row = rows[0]
    assert event_id.startswith("evt_") and len(event_id) > len("evt_")
    assert row["event_id"] == event_id
    assert row["tenant_id"] == "ten_a"
    assert row["event_type"] == "payment.completed"
    assert row["published_at"] is None
    body = json.loads(row["body"])
    assert set(body) == ENVELOPE_FIELDS
    assert body["event_id"] == event_id
    assert body["event_type"] == "payment.completed"
    assert body["tenant_id"] == "ten_a"
    assert body["data"] == data
    assert CREATED_AT.match(body["created_at"]), body["created_at"]
    created = datetime.datetime.strptime(body["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert before <= created <= after

    # A rolled-back transaction leaves nothing behind, whether rolled back explicitly or by an error.
    async with outbox.pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        rolled_back = await events.emit(conn, tenant_id="ten_a", event_type="payment.failed", data={})
        await tr.rollback()
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                errored = await events.emit(conn, tenant_id="ten_a", event_type="payment.failed", data={})
                _ = 1 / 0
    assert rolled_back != errored
    assert [r["event_id"] for r in await outbox.rows()] == [event_id]


# -- the relay --------------------------------------------------------------------------------


async def test_relay_publishes_each_event_once_in_order(outbox: Outbox) -> None:
    specs: list[tuple[str, str, dict[str, Any]]] = [
        ("ten_a", "payment.completed", {"n": 1}),
        ("ten_b", "transfer.created", {"n": 2}),
        ("ten_a", "payout.requested", {"n": 3, "note": "ünïcode ✓"}),
    ]
    ids = await emit_committed(outbox, specs)
    ids += await emit_committed(outbox, [("ten_c", "ledger.posted", {"n": i}) for i in range(4, 8)])
    assert len(set(ids)) == 7

    relay = outbox.relay(batch_max=3)
    assert await relay_until_empty(relay) == [3, 3, 1, 0]

    rows = await outbox.rows()
    assert [r["event_id"] for r in rows] == ids
    assert all(r["published_at"] is not None for r in rows)
    assert await outbox.stream_count() == 7

    msgs = await outbox.consume_all()
    assert len(msgs) == 7
    for msg, row in zip(msgs, rows, strict=True):  # stream order is seq order
        assert msg.subject == f"{outbox.prefix}.{row['tenant_id']}.{row['event_type']}"
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == row["event_id"]
        assert msg.data == row["body"].encode()  # byte for byte, never re-serialised

    # Nothing left: a second pass publishes nothing and marks nothing.
    marked = [r["published_at"] for r in rows]
    assert await relay.relay_once() == 0
    assert await outbox.stream_count() == 7
    assert [r["published_at"] for r in await outbox.rows()] == marked


CRASHING_RELAY = textwrap.dedent(
    """
    import asyncio
    import os
    import pathlib
    import sys

    from services.common import db, events

    database_url, schema, nats_url, prefix, app_name, record = sys.argv[1:]


    def die(event_id: str) -> None:
        # JetStream has acknowledged the publish; the UPDATE marking it sent has not run.
        pathlib.Path(record).write_text(event_id)
        os._exit(137)


    async def main() -> int:
        pool = await db.create_pool(
            database_url, schema, application_name=app_name, max_size=2, statement_timeout_ms=5000
        )
        nc = await events.connect_nats(nats_url, name=app_name)
        try:
            relay = events.OutboxRelay(
                pool, nc.jetstream(), subject_prefix=prefix, batch_max=100,
                poll_interval_s=0.05, retention_s=3600.0, after_publish=die,
            )
            await relay.relay_once()
        finally:
            await nc.close()
            await pool.close()
        return 3  # the hook never ran


    sys.exit(asyncio.run(main()))
    """
)


async def test_event_reaches_jetstream_exactly_once_when_relay_is_killed_between_publish_and_mark(
    outbox: Outbox, tmp_path: Path
) -> None:
    ids = await emit_committed(outbox, [(f"ten_{i % 2}", "payment.completed", {"i": i}) for i in range(5)])
    script = tmp_path / "crashing_relay.py"
    script.write_text(CRASHING_RELAY)
    record = tmp_path / "published_before_crash"
    app_name = f"crashing-relay-{secrets.token_hex(4)}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen"), env.get("PYTHONPATH", "")])
    argv = [sys.executable, str(script), outbox.database_url, outbox.schema, outbox.nats_url, outbox.prefix]
    proc = await asyncio.to_thread(
        subprocess.run,
        [*argv, app_name, str(record)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 137, proc.stderr
    assert record.read_text() == ids[0]  # it died right after the first publish was acknowledged

    # PostgreSQL notices the dead client and rolls its transaction back, releasing the row locks.
    async def crashed_session_gone() -> bool:
        n = await outbox.pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name)
        return bool(n == 0)

    await eventually(crashed_session_gone)
    rows = await outbox.rows()
    assert [r["event_id"] for r in rows] == ids
    assert all(r["published_at"] is None for r in rows)  # nothing was marked sent
    # But the first event is in JetStream (and, the relay pipelining its publishes, maybe more).
    in_stream = await outbox.stream_count()
    assert 1 <= in_stream <= 5
    before = await outbox.consume_all()
    assert [m.headers["Nats-Msg-Id"] if m.headers else None for m in before] == ids[:in_stream]

    # A healthy relay republishes the whole batch; JetStream drops the copy of the first event.
    assert sum(await relay_until_empty(outbox.relay())) == 5
    rows = await outbox.rows()
    assert all(r["published_at"] is not None for r in rows)
    assert await outbox.stream_count() == 5

    msgs = await outbox.consume_all()
    got = [m.headers["Nats-Msg-Id"] if m.headers else None for m in msgs]
    assert got == ids  # all five, each once, in order
    assert got.count(ids[0]) == 1
    assert [m.data for m in msgs] == [r["body"].encode() for r in rows]


async def test_two_concurrent_relays_publish_each_event_exactly_once(outbox: Outbox) -> None:
    total = 200
    ids = await emit_committed(outbox, [(f"ten_{i % 3}", "transfer.created", {"i": i}) for i in range(total)])

    token = secrets.token_hex(4)
    pools = [
        await db.create_pool(
            outbox.database_url,
            outbox.schema,
            application_name=f"relay-{k}-{token}",
            max_size=4,
            statement_timeout_ms=5000,
        )
        for k in range(2)
    ]
    clients = [await events.connect_nats(outbox.nats_url, name=f"relay-{k}-{token}") for k in range(2)]
    published: list[list[str]] = [[], []]
    try:
        relays = [
            outbox.relay(pools[k], clients[k].jetstream(), batch_max=10, after_publish=published[k].append)
            for k in range(2)
        ]
        rounds = await asyncio.gather(*(relay_until_empty(r) for r in relays))
    finally:
        for nc in clients:
            await nc.close()
        for pool in pools:
            await pool.close()

    # Each row was handed to exactly one relay, and each relay published only its own rows.
    assert sum(sum(r) for r in rounds) == total
    assert all(published), "both relays should have taken a share of the work"
    every_publish = published[0] + published[1]
    assert len(every_publish) == total
    assert sorted(every_publish) == sorted(ids)
    assert all(r["published_at"] is not None for r in await outbox.rows())

    assert await outbox.stream_count() == total
    msgs = await outbox.consume_all()
    msg_ids = [m.headers["Nats-Msg-Id"] if m.headers else None for m in msgs]
    assert len(msg_ids) == total
    assert len(set(msg_ids)) == total
    assert set(msg_ids) == set(ids)


async def test_prune_deletes_only_published_rows_older_than_retention(outbox: Outbox) -> None:
    old_a, old_b, recent = await emit_committed(outbox, [("ten_a", "payment.completed", {"i": i}) for i in range(3)])
    assert await outbox.relay().relay_once() == 3
    (pending,) = await emit_committed(outbox, [("ten_a", "payment.completed", {"i": 3})])
    # Two published an hour and more ago; the unsent one is old too, but unsent rows are never pruned.
    await outbox.pool.execute(
        "UPDATE outbox SET published_at = now() - interval '2 hours' WHERE event_id = ANY($1::text[])",
        [old_a, old_b],
    )
    await outbox.pool.execute("UPDATE outbox SET created_at = now() - interval '3 hours' WHERE event_id = $1", pending)

    assert await outbox.relay(retention_s=3600.0).prune() == 2
    assert [r["event_id"] for r in await outbox.rows()] == [recent, pending]

    assert await outbox.relay(retention_s=0).prune() == 1
    rows = await outbox.rows()
    assert [r["event_id"] for r in rows] == [pending]
    assert rows[0]["published_at"] is None

    assert await outbox.relay(retention_s=0).prune() == 0
    assert len(await outbox.rows()) == 1


async def test_a_round_with_a_refused_publish_marks_nothing_and_the_relay_goes_on(outbox: Outbox) -> None:
    ids = await emit_committed(outbox, [("ten_a", "payment.completed", {"i": i}) for i in range(5)])
    # A relay whose subjects no stream captures: JetStream answers "no responders" for each.
    stray = events.OutboxRelay(
        outbox.pool,
        outbox.js,
        subject_prefix=f"nobody_{secrets.token_hex(4)}",
        batch_max=100,
        poll_interval_s=0.05,
        retention_s=3600.0,
    )
    with pytest.raises(nats.errors.Error):
        await stray.relay_once()
    assert all(r["published_at"] is None for r in await outbox.rows())
    assert await outbox.stream_count() == 0
    # The client's slots for pending publishes were all given back: later rounds still publish.
    for _ in range(3):
        with pytest.raises(nats.errors.Error):
            await stray.relay_once()
    assert sum(await relay_until_empty(outbox.relay())) == 5
    assert [m.headers["Nats-Msg-Id"] if m.headers else None for m in await outbox.consume_all()] == ids


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
