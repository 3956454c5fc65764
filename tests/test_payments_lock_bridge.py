"""The player's lock across a rolling deploy (payments migration 0009): the previous release locked
a row of player_locks, this one takes an advisory lock; the table's trigger makes the previous
release's statements take the advisory lock too, so replicas of both versions still serialise one
player's purchases, and two of them can never together pass a cap.

Each direction is checked with the previous release's own two statements (from commit 1eb8dff),
sent on a connection of the test's: one of them holding its transaction open, the other side is
seen waiting on the player's advisory lock in pg_locks, and goes on once the first commits."""

from __future__ import annotations

import asyncio

import asyncpg

from services.payments import limits
from tests import payments_support as ps
from tests.helpers import Api, eventually
from tests.payments_support import payments_db

# What the previous release ran, in the purchase's transaction, before it read the caps.
PREVIOUS_LOCK = (
    "INSERT INTO player_locks (tenant_id, player_email) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    "SELECT 1 FROM player_locks WHERE tenant_id = $1 AND player_email = $2 FOR UPDATE",
)

__all__ = ["payments_db"]  # the fixture, imported for this module's tests


async def previous_release_lock(conn: asyncpg.Connection, tenant_id: str, email: str) -> None:
    for sql in PREVIOUS_LOCK:
        await conn.execute(sql, tenant_id, email)


async def waiting_on_player(pool: asyncpg.Pool, tenant_id: str, email: str) -> bool:
    """Is a transaction waiting for this player's advisory lock (the two-key form: classid is the
    first key, objid the second as an unsigned 32-bit number, objsubid 2)?"""
    return bool(
        await pool.fetchval(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND classid = $1 AND objsubid = 2"
            " AND objid = ((hashtext($2 || chr(31) || $3)::bigint & 4294967295)::text)::oid",
            limits.PLAYER_LOCK_CLASS,
            tenant_id,
            email,
        )
    )


async def test_a_purchase_waits_for_the_previous_release_holding_the_player(
    api: Api, payments_db: asyncpg.Pool
) -> None:
    t = await api.create_tenant(name="Lock Bridge Game", currency_name="Gems")
    player = ps.email()
    async with payments_db.acquire() as old:
        tx = old.transaction()
        await tx.start()
        try:
            await previous_release_lock(old, t["tenant_id"], player)
            purchase = asyncio.ensure_future(ps.buy(api, t, player))
            await eventually(lambda: waiting_on_player(payments_db, t["tenant_id"], player), timeout_s=10)
            assert not purchase.done()
        finally:
            await tx.commit()
    resp = await purchase
    assert resp.status == 200 and resp.body["status"] == "success", resp
    assert await ps.balance(api, t, player) == resp.body["new_balance"] == "100"  # $10.00, credited once


async def test_the_previous_release_waits_for_a_purchase_holding_the_player(
    api: Api, payments_db: asyncpg.Pool
) -> None:
    t = await api.create_tenant(name="Lock Bridge Game", currency_name="Gems")
    player = ps.email()
    async with payments_db.acquire() as new, payments_db.acquire() as old:
        tx = new.transaction()
        await tx.start()
        try:
            await limits.lock_player(new, t["tenant_id"], player)  # as this release's purchase does
            previous = asyncio.ensure_future(old.execute(PREVIOUS_LOCK[0], t["tenant_id"], player))
            await eventually(lambda: waiting_on_player(payments_db, t["tenant_id"], player), timeout_s=10)
            assert not previous.done()
        finally:
            await tx.commit()
        assert await asyncio.wait_for(previous, 10) == "INSERT 0 1"
