"""common.transitions on a real table: a move and its audit row are one statement, a move that is
not allowed changes nothing, and a move racing another sees the status the other committed."""

from __future__ import annotations

import asyncio
import json
import pathlib
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.stack import Stack
from services.common import db
from services.common.transitions import Event, Lifecycle
from tests.helpers import eventually

ALLOWED = {
    "open": frozenset({"closed", "void"}),
    "closed": frozenset({"archived"}),
    "void": frozenset(),
    "archived": frozenset(),
}
LIFE = Lifecycle(table="things", key_column="thing_id", audit_table="thing_transitions", allowed=ALLOWED)
LISTED = Lifecycle(
    table="things", key_column="thing_id", audit_table="thing_transitions", allowed=ALLOWED, columns="thing_id, status"
)
ROOT = pathlib.Path(__file__).resolve().parent.parent
INSERT = "INSERT INTO things (thing_id, status, note) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"


@pytest.fixture
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    url = stack.env["INVO_DATABASE_URL"]
    schema = f"test_transitions_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE "{schema}".things (thing_id text PRIMARY KEY, status text NOT NULL, note text,'
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(
            f'CREATE TABLE "{schema}".thing_transitions (id bigserial PRIMARY KEY, thing_id text NOT NULL,'
            " from_status text NOT NULL, to_status text NOT NULL, source text NOT NULL, reason text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
        outbox = (ROOT / "services/common/migrations/outbox/0001_outbox.sql").read_text()
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(outbox)
    finally:
        await conn.close()
    p = await asyncpg.create_pool(url, min_size=1, max_size=4, server_settings={"search_path": schema})
    try:
        yield p
    finally:
        await p.close()
        await db.drop_schema(url, schema)


async def _audit(pool: asyncpg.Pool, key: str) -> list[tuple[str, str, str, str]]:
    rows = await LIFE.history(pool, key)
    return [(r["from_status"], r["to_status"], r["source"], r["reason"]) for r in rows]


async def test_insert_writes_the_row_and_its_first_audit_row_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        row = await LIFE.insert(conn, INSERT, "t1", "open", "first", source="api", reason="made")
    assert row is not None and (row["thing_id"], row["status"], row["note"]) == ("t1", "open", "first")
    async with pool.acquire() as conn, conn.transaction():
        again = await LIFE.insert(conn, INSERT, "t1", "open", "second", source="api", reason="made again")
    assert again is None
    assert await pool.fetchval("SELECT note FROM things WHERE thing_id = 't1'") == "first"
    assert await _audit(pool, "t1") == [("", "open", "api", "made")]


async def test_a_move_updates_returns_and_audits_and_a_refused_one_changes_nothing(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await LIFE.insert(conn, INSERT, "t2", "open", None, source="api", reason="made")
        moved = await LISTED.move(conn, "t2", "closed", source="loop", reason="done", sets={"note": "n"})
    assert moved is not None and dict(moved) == {"thing_id": "t2", "status": "closed"}  # `columns`, nothing else
    assert await pool.fetchval("SELECT note FROM things WHERE thing_id = 't2'") == "n"
    async with pool.acquire() as conn, conn.transaction():
        assert await LIFE.move(conn, "t2", "void", source="api", sets={"note": "x"}) is None  # closed -> void: no
        assert await LIFE.move(conn, "missing", "closed", source="api") is None
    row = await pool.fetchrow("SELECT status, note FROM things WHERE thing_id = 't2'")
    assert (row["status"], row["note"]) == ("closed", "n")
    assert await _audit(pool, "t2") == [("", "open", "api", "made"), ("open", "closed", "loop", "done")]
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError):
            await LIFE.move(conn, "t2", "nowhere", source="api")


async def test_a_move_outside_a_transaction_writes_its_event_only_if_it_moved(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await LIFE.insert(conn, INSERT, "t4", "open", None, source="api", reason="made")
    event = Event("tn_1", "thing.closed", {"thing_id": "t4"})
    moved = await LIFE.move(pool, "t4", "closed", source="api", reason="closing", event=event)
    assert moved is not None and moved["status"] == "closed"
    assert await LIFE.move(pool, "t4", "closed", source="api", reason="again", event=event) is None
    rows = await pool.fetch("SELECT event_id, tenant_id, event_type, body FROM outbox")
    assert [(r["tenant_id"], r["event_type"]) for r in rows] == [("tn_1", "thing.closed")]
    body = json.loads(rows[0]["body"])
    assert (body["event_id"], body["event_type"], body["data"]) == (rows[0]["event_id"], "thing.closed", event.data)
    assert await _audit(pool, "t4") == [("", "open", "api", "made"), ("open", "closed", "api", "closing")]


async def test_a_move_waiting_on_another_sees_the_status_it_committed(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await LIFE.insert(conn, INSERT, "t3", "open", None, source="api", reason="made")
    first = await pool.acquire()
    try:
        tx = first.transaction()
        await tx.start()
        assert await LIFE.move(first, "t3", "closed", source="a", reason="first") is not None

        async def second(to: str) -> asyncpg.Record | None:
            async with pool.acquire() as conn, conn.transaction():
                return await LIFE.move(conn, "t3", to, source="b", reason=to)

        # Both wait on the first's row lock, with a snapshot taken before it committed.
        void = asyncio.create_task(second("void"))  # allowed only from open: must be refused
        archive = asyncio.create_task(second("archived"))  # allowed only from closed: must happen

        async def both_waiting() -> bool:
            n = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'WITH cur AS%'"
            )
            return bool(n == 2)

        assert await eventually(both_waiting)
        await tx.commit()
    finally:
        await pool.release(first)
    assert await asyncio.wait_for(void, 10) is None
    archived = await asyncio.wait_for(archive, 10)
    assert archived is not None and archived["status"] == "archived"
    assert await _audit(pool, "t3") == [
        ("", "open", "api", "made"),
        ("open", "closed", "a", "first"),
        ("closed", "archived", "b", "archived"),
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves=st.lists(st.sampled_from(sorted(ALLOWED)), max_size=6))
async def test_moves_follow_the_lifecycle_and_every_change_has_its_audit_row(
    pool: asyncpg.Pool, moves: list[str]
) -> None:
    key = f"h{secrets.token_hex(6)}"
    async with pool.acquire() as conn, conn.transaction():
        await LIFE.insert(conn, INSERT, key, "open", None, source="api", reason="made")
    status, expected = "open", [("", "open", "api", "made")]
    for to in moves:
        async with pool.acquire() as conn, conn.transaction():
            moved = await LIFE.move(conn, key, to, source="h", reason=to)
        if LIFE.can_move(status, to):
            assert moved is not None and moved["status"] == to
            expected.append((status, to, "h", to))
            status = to
        else:
            assert moved is None
    assert await pool.fetchval("SELECT status FROM things WHERE thing_id = $1", key) == status
    assert await _audit(pool, key) == expected
