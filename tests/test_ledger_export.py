"""Ledger reads through the public gateway, the NDJSON export: every player and the summary,
a tenant without players, and 200,000 players streamed with flat memory.

Every test makes its own tenants; players are funded with admin credits. The 200k export seeds its
players straight into the ledger's tables (as one balanced transaction from a world account of its
own) and removes them afterwards, so the shared ledger check stays ok for every other test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from devstack.stack import Stack
from services.common import ids
from services.common.config import Settings
from tests.helpers import Api, assert_envelope
from tests.ledger_reads_support import BALANCE_KEYS, assert_summary, credit, export, minor_text, purchase

# -- 6. the export ----------------------------------------------------------------------------


async def test_export_streams_every_player_as_ndjson(api: Api) -> None:
    t = await api.create_tenant()
    players = 300
    amounts = {f"player{i:03d}@export.test": minor_text(100 + 7 * i) for i in range(players)}
    emails = list(amounts)
    for start in range(0, players, 50):
        batch = emails[start : start + 50]
        # Mixed case on the way in; the export shows the normalised email.
        results = await asyncio.gather(*(credit(api, t["tenant_id"], e.upper(), amounts[e]) for e in batch))
        assert all(r.status == 200 for r in results), [r for r in results if r.status != 200]
    await purchase(api, t["sdk_key"], emails[0], "0.5")
    amounts[emails[0]] = minor_text(100 - 50)

    resp, lines = await export(api, t["sdk_key"])
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert len(lines) == players + 1
    rows = lines[:-1]
    assert all(set(row) == BALANCE_KEYS for row in rows)
    assert {row["player_email"]: row["balance"] for row in rows} == amounts
    assert len({row["player_email"] for row in rows}) == players
    assert all(row["available_balance"] == row["balance"] and row["pending"] == "0" for row in rows)
    assert_summary(lines[-1], players)


async def test_export_of_a_tenant_without_players_is_just_the_summary(api: Api) -> None:
    t = await api.create_tenant()
    resp, lines = await export(api, t["sdk_key"])
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert len(lines) == 1
    assert_summary(lines[0], 0)
    assert_envelope(await api.get("/api/players/balances/export"), 401, "MISSING_API_KEY")


# -- 7. the export of 200,000 players with flat memory ----------------------------------------

BULK_PLAYERS = 200_000
# Measured: the gateway grows ~5 MiB, the ledger <1 MiB. 200k rows held at once would cost >100 MiB
# as protobuf messages, and 20 MiB for the bare NDJSON bytes alone (40 MiB while joined and encoded).
RSS_GROWTH_MAX_MIB = 16.0
STALL_S = 3.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples the resident memory of some processes every few milliseconds from a thread of its
    own (so a busy event loop in the test does not thin the samples out), keeping each peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.baseline = {name: rss_mib(pid) for name, pid in pids.items()}
        self.peak = dict(self.baseline)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], rss_mib(pid))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def growth(self) -> dict[str, float]:
        return {name: round(self.peak[name] - self.baseline[name], 1) for name in self.pids}


async def seed_bulk_players(conn: asyncpg.Connection, tenant_id: str, txn_id: str, world: str, n: int) -> None:
    """n players u<i>@bulk.test holding i hundredths each, funded by one balanced transaction from
    a world account of this test's own, so the ledger check (total, drift, balance) stays ok.

    No ledger write lock is taken: every row written belongs to this test's new tenant or its own
    world account, which the engine never touches, and only this tenant's feed shows the entries,
    so the engine is not held up for the seconds the insert takes."""
    total = n * (n + 1) // 2
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO transactions (id, tenant_id, kind, status, postings, metadata, created_at)"
            " VALUES ($1, $2, 'bulk_seed', 'posted', '[]', '{\"seeded_by\": \"tests/test_ledger_reads.py\"}', now())",
            txn_id,
            tenant_id,
        )
        await conn.execute(
            "INSERT INTO accounts (code, kind, constrained, debits_posted) VALUES ($1, 'world', false, $2)",
            world,
            total,
        )
        await conn.execute(
            "INSERT INTO accounts (code, kind, tenant_id, player_email, constrained, credits_posted)"
            " SELECT 'player:' || $1::text || ':u' || i || '@bulk.test', 'player', $1::text,"
            "        'u' || i || '@bulk.test', true, i"
            " FROM generate_series(1, $2::int) AS i",
            tenant_id,
            n,
        )
        await conn.execute(
            "INSERT INTO entries (txn_id, tenant_id, account_id, amount, balance_after, created_at)"
            " SELECT $1, $2, id, credits_posted - debits_posted, credits_posted - debits_posted, now()"
            " FROM accounts WHERE (tenant_id = $2 AND kind = 'player') OR code = $3 ORDER BY id",
            txn_id,
            tenant_id,
            world,
        )


async def remove_bulk_players(conn: asyncpg.Connection, tenant_id: str, txn_id: str, world: str) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM entries WHERE txn_id = $1", txn_id)
        await conn.execute("DELETE FROM transactions WHERE id = $1", txn_id)
        await conn.execute(
            "DELETE FROM accounts WHERE tenant_id = $1 AND kind = 'player' AND player_email LIKE '%@bulk.test'",
            tenant_id,
        )
        await conn.execute("DELETE FROM accounts WHERE code = $1", world)


@pytest.mark.slow
async def test_export_streams_200k_players_with_flat_memory(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    tenant_id, key = t["tenant_id"], t["sdk_key"]
    empty = await api.create_tenant()
    txn_id = ids.new_id("txn")
    world = f"world:bulk-seed:{tenant_id}"
    conn = await asyncpg.connect(
        stack.env["INVO_DATABASE_URL"],
        timeout=10.0,
        server_settings={"search_path": Settings.from_env(stack.env).schema("ledger")},
    )
    try:
        started = time.monotonic()
        await seed_bulk_players(conn, tenant_id, txn_id, world, BULK_PLAYERS)
        seeded_s = time.monotonic() - started
        try:
            # The seed keeps the ledger whole.
            check = await api.get("/admin/ledger/check", admin=True)
            assert check.status == 200, check
            assert (check.body["ok"], check.body["total_balance"]) == (True, "0"), check.body
            # Warm the export path up on an empty tenant, so the baseline is the steady state.
            await export(api, empty["sdk_key"])

            sampler = RssSampler({"gateway": stack.procs["gateway"].pid, "ledger": stack.procs["ledger"].pid})
            seen = bytearray(BULK_PLAYERS + 1)
            lines = reads = 0
            summary: dict[str, Any] | None = None
            streamed_at = time.monotonic()
            with sampler:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
                    session.get(
                        stack.gateway_url + "/api/players/balances/export", headers={"X-Game-Secret-Key": key}
                    ) as resp,
                ):
                    assert resp.status == 200
                    assert resp.headers["Content-Type"] == "application/x-ndjson"
                    assert "Content-Length" not in resp.headers  # streamed, not one prepared body
                    carry = b""
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        reads += 1
                        if reads == 1:
                            # A slow client: the ledger could produce every row in this pause. With
                            # backpressure all the way down, nobody holds them while we do not read.
                            await asyncio.sleep(STALL_S)
                        parts = (carry + chunk).split(b"\n")
                        carry = parts.pop()
                        for part in parts:
                            lines += 1
                            row = json.loads(part)
                            assert summary is None, "a line after the summary"
                            if "count" in row:
                                summary = row
                                continue
                            email = row["player_email"]
                            assert email.startswith("u") and email.endswith("@bulk.test"), row
                            i = int(email[1 : -len("@bulk.test")])
                            assert not seen[i], f"{email} twice"
                            seen[i] = 1
                            assert row["balance"] == row["available_balance"] == minor_text(i), row
                            assert row["pending"] == "0"
                    assert carry == b""
            streamed_s = time.monotonic() - streamed_at
        finally:
            await remove_bulk_players(conn, tenant_id, txn_id, world)
    finally:
        await conn.close()

    growth = sampler.growth()
    print(
        f"\n200k export: seeded in {seeded_s:.1f}s, streamed in {streamed_s:.1f}s (with a {STALL_S}s reader stall),"
        f" {lines} lines in {reads} reads, {sampler.samples} RSS samples;"
        f" baseline MiB {sampler.baseline}, peak MiB {sampler.peak}, growth MiB {growth}"
    )
    assert summary is not None
    assert lines == BULK_PLAYERS + 1
    assert summary["count"] == BULK_PLAYERS
    assert_summary(summary, BULK_PLAYERS)
    assert sum(seen) == BULK_PLAYERS and not seen[0]
    assert sampler.samples >= 200, "too few RSS samples to say anything about the peak"
    for name, mib in growth.items():
        assert mib < RSS_GROWTH_MAX_MIB, f"{name} grew {mib} MiB exporting {BULK_PLAYERS} players"
    # And the ledger is whole again without them.
    check = await api.get("/admin/ledger/check", admin=True)
    assert (check.body["ok"], check.body["total_balance"]) == (True, "0"), check.body
