"""Events: the envelope, the transactional outbox and its relay to NATS JetStream.

`emit()` writes the event in the caller's transaction. `OutboxRelay` publishes unsent rows in
order with `Nats-Msg-Id` = event id, then marks them sent. A crash between the publish and the
mark republishes the row, and JetStream's duplicate window drops the copy; consumers dedupe on
the event id too, for anything older than the window.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import asyncpg
import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from services.common import ids, loops, metrics

log = logging.getLogger("invo.events")

DUPLICATE_WINDOW_S = 120.0
PUBLISH_TIMEOUT_S = 5.0
PRUNE_EVERY_ROUNDS = 3000
# Events wait out the backoff once their dependency is back: keep it short (a round is cheap).
RELAY_BACKOFF_MAX_S = 5.0


def iso(at: datetime.datetime | None) -> str | None:
    """A time as events write it ("2026-11-24T12:34:56Z", UTC), or None."""
    return None if at is None else at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(*, event_id: str, event_type: str, tenant_id: str, data: dict[str, Any]) -> str:
    created = iso(datetime.datetime.now(datetime.UTC))
    return json.dumps(
        {
            "event_id": event_id,
            "event_type": event_type,
            "created_at": created,
            "tenant_id": tenant_id,
            "data": data,
        },
        separators=(",", ":"),
    )


async def emit(conn: asyncpg.Connection, *, tenant_id: str, event_type: str, data: dict[str, Any]) -> str:
    """Write one event to the outbox of the connection's schema. Call it inside the transaction
    that makes the change the event announces."""
    if not conn.is_in_transaction():
        raise RuntimeError("events.emit must run inside the transaction of the change it announces")
    event_id = ids.new_id("evt")
    body = envelope(event_id=event_id, event_type=event_type, tenant_id=tenant_id, data=data)
    await conn.execute(
        "INSERT INTO outbox (event_id, tenant_id, event_type, body) VALUES ($1, $2, $3, $4)",
        event_id,
        tenant_id,
        event_type,
        body,
    )
    return event_id


def outbox_rows(
    items: list[tuple[str, str, dict[str, Any]]],
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Outbox columns (event_id, tenant_id, event_type, body) for (tenant_id, event_type, data)
    items, for a caller that writes them inside a larger statement of its own."""
    event_ids = [ids.new_id("evt") for _ in items]
    bodies = [
        envelope(event_id=eid, event_type=etype, tenant_id=tid, data=data)
        for eid, (tid, etype, data) in zip(event_ids, items, strict=True)
    ]
    return event_ids, [tid for tid, _, _ in items], [etype for _, etype, _ in items], bodies


def subject(prefix: str, tenant_id: str, event_type: str) -> str:
    return f"{prefix}.{tenant_id}.{event_type}"


async def connect_nats(url: str, *, name: str) -> NatsClient:
    return await nats.connect(
        url,
        name=name,
        connect_timeout=5,
        max_reconnect_attempts=-1,  # a service outlives a NATS restart
        reconnect_time_wait=1,
    )


async def ensure_stream(js: JetStreamContext, *, stream: str, subject_prefix: str, replicas: int = 1) -> None:
    """Create the stream, or bring an existing one to this configuration. `replicas` is stated every
    time: an update that leaves it out makes the server take it as 1, dropping the others' copies."""
    config = StreamConfig(
        name=stream,
        subjects=[f"{subject_prefix}.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=7 * 86400.0,
        num_replicas=max(1, replicas),
    )
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


PublishHook = Callable[[str], None]


class OutboxRelay:
    """Publishes one schema's outbox to JetStream in `seq` order.

    `seq` is allocated at INSERT, not at commit, so events of concurrent transactions (and of two
    relays sharing the work) can be published out of order: consumers must not rely on stream
    order, only on the event id and the state the event carries. (The ledger writes its events
    under its write lock, so its own outbox is in commit order.)"""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        subject_prefix: str,
        batch_max: int,
        poll_interval_s: float,
        retention_s: float,
        after_publish: PublishHook | None = None,
    ) -> None:
        self.pool = pool
        self.js = js
        self.subject_prefix = subject_prefix
        self.batch_max = batch_max
        self.poll_interval_s = poll_interval_s
        self.retention_s = retention_s
        # Test hook: runs after a publish is acknowledged and before the row is marked sent.
        self.after_publish = after_publish
        self._rounds = 0

    async def relay_once(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            # SKIP LOCKED lets two replicas share the work without publishing a row twice.
            rows = await conn.fetch(
                "SELECT seq, event_id, tenant_id, event_type, body,"
                " extract(epoch FROM clock_timestamp() - created_at)::float8 AS age_s FROM outbox"
                " WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_max,
            )
            await self._publish(rows)
            if rows:
                await conn.execute(
                    "UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])",
                    [r["seq"] for r in rows],
                )
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        metrics.OUTBOX_LAG.set(max(0.0, rows[0]["age_s"]) if rows else 0.0)
        return len(rows)

    async def _publish(self, rows: list[asyncpg.Record]) -> None:
        """Every row, pipelined: all are sent (in `seq` order, on one connection) before any
        acknowledgement is awaited, so a round costs one wait for NATS's fsync, not one per event.
        Returns once every publish is acknowledged; raises if any is refused or times out, after
        all of them have finished. Each is a plain request with its own timeout: nats-py's
        publish_async keeps a pending slot for ever when the send itself fails (a reconnect
        buffer full during an outage), and enough of those stop every later round."""

        async def one(row: asyncpg.Record) -> None:
            await self.js.publish(
                subject(self.subject_prefix, row["tenant_id"], row["event_type"]),
                row["body"].encode(),
                timeout=PUBLISH_TIMEOUT_S,
                headers={"Nats-Msg-Id": row["event_id"]},
            )
            if self.after_publish is not None:
                self.after_publish(row["event_id"])

        results = await asyncio.gather(*(one(row) for row in rows), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def prune(self) -> int:
        result = await self.pool.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
            float(self.retention_s),
        )
        return int(result.split()[-1])

    async def relay_round(self) -> float:
        """One round: publish a batch; the wait before the next (none after a full batch)."""
        sent = await self.relay_once()
        self._rounds += 1
        if self._rounds % PRUNE_EVERY_ROUNDS == 0:
            await self.prune()
        return 0.0 if sent >= self.batch_max else self.poll_interval_s

    async def run(self) -> NoReturn:
        """Relays for ever. A round that fails (the database or NATS away) marked nothing, so
        nothing is lost: it is retried with backoff, and the task never ends because of it."""
        await loops.supervised(
            "outbox-relay",
            self.relay_round,
            interval_s=self.poll_interval_s,
            log=log,
            backoff_max_s=RELAY_BACKOFF_MAX_S,
        )
