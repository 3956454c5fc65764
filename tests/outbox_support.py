"""What the tests of the transactional outbox share: an outbox of the test's own against real
PostgreSQL and NATS JetStream (the `outbox` fixture), emitting committed events, and relaying until
nothing is left.

Each test has its own schema (migrated with the shared outbox migration), its own JetStream stream
and its own subject prefix, all removed at the end.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from devstack.stack import Stack
from services.common import db, events


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
