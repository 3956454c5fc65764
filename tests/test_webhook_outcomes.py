"""The webhooks service records attempt outcomes in batches (group commit). Each test migrates its
own schema with the webhooks migrations, so the running service never sees these rows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from devstack.stack import Stack
from services.common import db
from services.webhooks.outcomes import Outcome, OutcomeWriter

MIGRATIONS = Path(__file__).resolve().parent.parent / "services" / "webhooks" / "migrations"


@pytest.fixture
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    url = stack.env["INVO_DATABASE_URL"]
    schema = f"test_outcomes_{secrets.token_hex(4)}"
    await db.migrate_url(url, schema, db.service_migrations("webhooks", MIGRATIONS, outbox=False))
    p = await db.create_pool(url, schema, application_name="test-outcomes", max_size=4, statement_timeout_ms=5000)
    try:
        yield p
    finally:
        await p.close()
        await db.drop_schema(url, schema)


@contextlib.asynccontextmanager
async def running(writer: OutcomeWriter) -> AsyncIterator[OutcomeWriter]:
    """The writer's loop runs for the block, as the service's background task does."""
    task = asyncio.ensure_future(writer.run())
    try:
        yield writer
    finally:
        assert not task.done(), "the writer's loop ended"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def leased_deliveries(pool: asyncpg.Pool, n: int) -> list[str]:
    ids = [f"whd_{i:04d}" for i in range(n)]
    await pool.execute(
        "INSERT INTO events (event_id, tenant_id, event_type, body)"
        " SELECT 'evt_' || d, 'tn_x', 'item.purchased', '{}' FROM unnest($1::text[]) d",
        ids,
    )
    await pool.execute(
        "INSERT INTO deliveries (delivery_id, event_id, tenant_id, event_type, url, status, next_attempt_at,"
        " lease_until) SELECT d, 'evt_' || d, 'tn_x', 'item.purchased', 'http://127.0.0.1:9/h', 'pending', now(),"
        " now() + interval '1 minute' FROM unnest($1::text[]) d",
        ids,
    )
    return ids


def outcome(delivery_id: str, status: str, *, code: int | None = 200, retry_in_s: float | None = None) -> Outcome:
    now = datetime.datetime.now(datetime.UTC)
    return Outcome(
        delivery_id=delivery_id,
        attempt=1,
        started_at=now,
        status_code=code,
        latency_ms=3,
        response_body="ok" if code else "",
        error="" if code else "ClientConnectorError: refused",
        status=status,
        cycle_attempts=1,
        next_attempt_at=None if retry_in_s is None else now + datetime.timedelta(seconds=retry_in_s),
    )


async def test_concurrent_outcomes_are_each_recorded_once_and_release_their_lease(pool: asyncpg.Pool) -> None:
    async with running(OutcomeWriter(pool)) as writer:
        ids = await leased_deliveries(pool, 200)
        # Half delivered, half failed with a retry scheduled: all finish at once.
        await asyncio.gather(
            *(
                writer.write(outcome(d, "delivered") if i % 2 else outcome(d, "pending", code=None, retry_in_s=30))
                for i, d in enumerate(ids)
            )
        )
        rows = await pool.fetch("SELECT * FROM deliveries ORDER BY delivery_id")
        assert [r["lease_until"] for r in rows] == [None] * 200
        assert all(r["attempts"] == 1 and r["cycle_attempts"] == 1 for r in rows)
        assert [r["status"] for r in rows] == ["pending", "delivered"] * 100
        assert all((r["delivered_at"] is not None) == (r["status"] == "delivered") for r in rows)
        assert all((r["next_attempt_at"] is None) == (r["status"] == "delivered") for r in rows)
        attempts = await pool.fetch("SELECT delivery_id, status_code, error FROM delivery_attempts")
        assert sorted(a["delivery_id"] for a in attempts) == ids  # one attempt each, none twice
        assert {a["status_code"] for a in attempts} == {200, None}


async def test_a_batch_that_cannot_be_written_fails_its_writers_and_the_writer_goes_on(pool: asyncpg.Pool) -> None:
    async with running(OutcomeWriter(pool)) as writer:
        good, other = await leased_deliveries(pool, 2)
        with pytest.raises(asyncpg.DataError):
            await writer.write(outcome(other, "delivered", code=2**40))  # no integer column holds it
        # Nothing of it was written; the delivery keeps its lease (and is tried again later).
        assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 0
        assert await pool.fetchval("SELECT lease_until FROM deliveries WHERE delivery_id = $1", other) is not None
        await writer.write(outcome(good, "delivered"))
        row = await pool.fetchrow("SELECT status, lease_until FROM deliveries WHERE delivery_id = $1", good)
        assert (row["status"], row["lease_until"]) == ("delivered", None)


async def test_an_outcome_written_twice_or_late_changes_nothing(pool: asyncpg.Pool) -> None:
    async with running(OutcomeWriter(pool)) as writer:
        (d,) = await leased_deliveries(pool, 1)
        first = outcome(d, "pending", code=None, retry_in_s=30)
        await writer.write(first)
        await writer.write(first)  # a retry after a write whose answer was lost
        row = await pool.fetchrow("SELECT status, attempts FROM deliveries WHERE delivery_id = $1", d)
        assert (row["status"], row["attempts"]) == ("pending", 1)
        second = dataclasses.replace(outcome(d, "delivered"), attempt=2, cycle_attempts=2)
        await writer.write(second)
        await writer.write(first)  # attempt 1's outcome arriving late
        row = await pool.fetchrow("SELECT status, attempts FROM deliveries WHERE delivery_id = $1", d)
        assert (row["status"], row["attempts"]) == ("delivered", 2)
        attempts = await pool.fetch("SELECT attempt FROM delivery_attempts WHERE delivery_id = $1 ORDER BY id", d)
        assert [a["attempt"] for a in attempts] == [1, 2]


async def test_queued_outcomes_are_written_by_flush_once_the_writer_is_stopped(pool: asyncpg.Pool) -> None:
    writer = OutcomeWriter(pool)  # never run: as at shutdown, after the background task is cancelled
    ids = await leased_deliveries(pool, 3)
    waiting = [asyncio.ensure_future(writer.write(outcome(d, "delivered"))) for d in ids]
    await asyncio.sleep(0)
    waiting[0].cancel()  # its sender was cancelled; the attempt still reached the partner
    await writer.flush()
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 'delivered'") == 3
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_one_bad_outcome_in_a_batch_keeps_none_of_the_others_off_the_record(pool: asyncpg.Pool) -> None:
    writer = OutcomeWriter(pool)
    ids = await leased_deliveries(pool, 20)
    # Queued before the writer starts, so they are one batch; one names no delivery, and one
    # carries a partner's answer with a NUL byte in it (PostgreSQL text cannot hold NUL).
    writes = [asyncio.ensure_future(writer.write(outcome(d, "delivered"))) for d in ids[:10]]
    writes.append(asyncio.ensure_future(writer.write(outcome("whd_gone", "delivered"))))  # ignored
    writes.append(asyncio.ensure_future(writer.write(outcome(ids[19], "delivered", code=2**40))))  # refused
    nul = dataclasses.replace(outcome(ids[10], "delivered"), response_body="ok\x00then binary")
    writes.append(asyncio.ensure_future(writer.write(nul)))
    writes += [asyncio.ensure_future(writer.write(outcome(d, "delivered"))) for d in ids[11:19]]
    await asyncio.sleep(0)
    async with running(writer):
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert [type(r).__name__ for r in results if r is not None] == ["DataError"]
        rows = await pool.fetch(
            "SELECT delivery_id, status, lease_until FROM deliveries WHERE delivery_id <> $1", ids[19]
        )
        assert len(rows) == 19 and {(r["status"], r["lease_until"]) for r in rows} == {("delivered", None)}
        body = await pool.fetchval("SELECT response_body FROM delivery_attempts WHERE delivery_id = $1", ids[10])
        assert body == "ok\ufffdthen binary"


async def test_claims_walk_every_endpoint_in_turn_and_cap_each_one(pool: asyncpg.Pool) -> None:
    """More endpoints than one claim looks at (256): every delivery is still claimed, once, and
    no claim takes more than the per-endpoint cap from the endpoint with a backlog."""
    from services.common.config import Settings
    from services.webhooks.sender import Sender

    one_each = [(f"whd_{i:04d}", f"http://127.0.0.1:9/e{i:04d}") for i in range(400)]
    backlog = [(f"whd_b{i:03d}", "http://127.0.0.1:9/backlog") for i in range(40)]
    rows = one_each + backlog
    await pool.execute(
        "INSERT INTO events (event_id, tenant_id, event_type, body)"
        " SELECT 'evt_' || d, 'tn_x', 'item.purchased', '{}' FROM unnest($1::text[]) d",
        [d for d, _ in rows],
    )
    await pool.execute(
        "INSERT INTO deliveries (delivery_id, event_id, tenant_id, event_type, url, status, next_attempt_at)"
        " SELECT d, 'evt_' || d, 'tn_x', 'item.purchased', u, 'pending', now() - interval '1 minute'"
        " FROM unnest($1::text[], $2::text[]) AS x(d, u)",
        [d for d, _ in rows],
        [u for _, u in rows],
    )
    settings = dataclasses.replace(Settings.from_env({}), webhook_per_endpoint_max=8)
    webhooks = Sender(pool, settings, tenants=None, wake=asyncio.Event())  # type: ignore[arg-type]  # claims never ask tenants
    try:
        claimed: list[str] = []
        for _ in range(40):
            got = await webhooks.claim(64)
            per_url: dict[str, int] = {}
            for r in got:
                per_url[r["url"]] = per_url.get(r["url"], 0) + 1
            assert max(per_url.values(), default=0) <= 8
            claimed += [r["delivery_id"] for r in got]
            if len(claimed) == len(rows):
                break
        assert sorted(claimed) == sorted(d for d, _ in rows)  # each once: a leased row is not claimed again
        assert await webhooks.claim(64) == []
    finally:
        await webhooks.close()
