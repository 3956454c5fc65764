"""What the database and the machine did during a scenario's measured window.

`make bench` reports, beside each scenario's requests, what its load cost the one PostgreSQL
primary: ledger entries and transactions written per second (exact: the entries' sequence, the
transactions' timestamps), commits and WAL bytes and WAL fsyncs per second (PostgreSQL's
cumulative statistics, flushed about once a second, so a 10 s window is right to about a tenth),
and CPU seconds per second by process group (PostgreSQL, ledger, gateway, the other services, the
load generator) from /proc, with the machine's busy share. That is the figure k8s/README.md's
scaling path reads: where the primary itself, not the box, runs out.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import time
from typing import Any

import asyncpg

PROC = pathlib.Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = ("postgres", "ledger", "gateway", "services", "nats", "bench")


def _group(pid: str) -> str | None:
    try:
        cmd = (PROC / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if int(pid) == os.getpid():
        return "bench"
    if "postgres" in cmd.split(" ", 1)[0]:
        return "postgres"
    if "nats-server" in cmd:
        return "nats"
    if "-m services." in cmd or "-m devstack." in cmd:
        return "ledger" if "services.ledger" in cmd else "gateway" if "services.gateway" in cmd else "services"
    return None


def _process(pid: str, group: str) -> str:
    """The finer name a group's process goes by in `cpu_by_process`: the module it runs
    (services.payments, devstack.processor_sim, ...) or the group's own name."""
    if group not in ("ledger", "gateway", "services"):
        return group
    try:
        cmd = (PROC / pid / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return group
    module = cmd[cmd.index(b"-m") + 1].decode(errors="replace") if b"-m" in cmd[:-1] else group
    return module.removesuffix(".__main__")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each group's live processes, and (keys with a
    dot, or "bench"/"postgres"/"nats") by each process's module, summed over its replicas."""
    out = dict.fromkeys(GROUPS, 0.0)
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or (group := _group(entry.name)) is None:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        out[group] += used
        name = _process(entry.name, group)
        if name != group:
            out[name] = out.get(name, 0.0) + used
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot; iowait counts as idle."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclasses.dataclass
class Sample:
    at_s: float
    wall: datetime.datetime
    db: dict[str, float]
    cpu: dict[str, float]
    machine: tuple[float, float]


class Observer:
    """`begin()` at the start of the measured window, `end()` at its close; `end` returns the rates."""

    def __init__(self, database_url: str, ledger_schema: str = "ledger") -> None:
        self.url = database_url
        self.schema = ledger_schema
        self.conn: asyncpg.Connection | None = None
        self.first: Sample | None = None

    async def _sample(self) -> Sample:
        if self.conn is None:
            self.conn = await asyncpg.connect(self.url, timeout=10)
        c = self.conn
        row = await c.fetchrow(
            f"""SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
                       (SELECT wal_bytes FROM pg_stat_wal) AS wal_bytes,
                       (SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal') AS wal_fsyncs,
                       (SELECT last_value FROM "{self.schema}".entries_id_seq) AS entries,
                       clock_timestamp() AS now""",
            timeout=10,
        )
        assert row is not None
        db = {k: float(row[k] or 0) for k in ("commits", "wal_bytes", "wal_fsyncs", "entries")}
        return Sample(time.monotonic(), row["now"], db, cpu_seconds(), machine_busy())

    async def begin(self) -> None:
        self.first = await self._sample()

    async def end(self) -> dict[str, Any]:
        if self.first is None:
            return {}
        a, b = self.first, await self._sample()
        assert self.conn is not None
        txns = await self.conn.fetchval(
            f'SELECT count(*) FROM "{self.schema}".transactions WHERE created_at >= $1 AND created_at < $2',
            a.wall,
            b.wall,
            timeout=30,
        )
        await self.conn.close()
        self.conn = None
        span = max(b.at_s - a.at_s, 1e-9)
        busy = b.machine[0] - a.machine[0]
        total = b.machine[1] - a.machine[1]
        rate = {k: (b.db[k] - a.db[k]) / span for k in a.db}
        return {
            "ledger_transactions_per_s": round(txns / span, 1),
            "ledger_entries_per_s": round(rate["entries"], 1),
            "db_commits_per_s": round(rate["commits"], 1),
            "wal_mb_per_s": round(rate["wal_bytes"] / 1e6, 2),
            "wal_fsyncs_per_s": round(rate["wal_fsyncs"], 1),
            "cpu_cores": {g: round((b.cpu[g] - a.cpu[g]) / span, 2) for g in GROUPS},
            # The same by process module (a process that ended in the window is left out).
            "cpu_by_process": {
                k: round((b.cpu[k] - a.cpu.get(k, 0.0)) / span, 2) for k in sorted(b.cpu) if k not in GROUPS
            },
            "machine_busy": round(busy / total, 3) if total else None,
        }
