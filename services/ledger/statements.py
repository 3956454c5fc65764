"""A tenant's daily statement, reconciled to its entries.

For a UTC day: the opening and closing balances of the tenant's players (every wallet together)
and of its revenue, and every movement of the day grouped by account (as `ListEntries` names it to
the tenant) and transaction kind, with counts. It reads the entries `ListEntries` reads, so the
day's movements are the sum of that day's `GET /api/ledger/entries`, and closing = opening + the
day's movements of each group.

How it stays cheap: entry ids are allocated under the ledger's write lock, in commit order, and an
entry's time is its batch's, so the first entry of a day is found by a binary search over the
primary key (about log2(entries) index probes); the day's entries of the tenant are then an index
range (`entries_tenant`). Opening balances are the accounts' current totals less the tenant's
entries since the day began, all in one REPEATABLE READ snapshot. A day that is not over (or
ended less than `GRACE_S` ago, while its last batches may still commit) is `complete = false`.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2

from services.common import errors, grpcutil, ids
from services.ledger import chart, validate

GRACE_S = 60
GROUPS = {"player": "players", "revenue": "revenue"}


def _day(text: str) -> datetime.datetime:
    try:
        day = datetime.date.fromisoformat(text)
        if len(text) != 10:
            raise ValueError(text)
    except ValueError:
        raise errors.InvalidRequest(
            "day must be a date, YYYY-MM-DD.", error_code="INVALID_PARAMETER", extra={"param": "day"}
        ) from None
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)


async def first_entry_at(conn: asyncpg.Connection, at: datetime.datetime) -> int | None:
    """The smallest entry id whose time is `at` or later, or None if there is none yet."""
    bounds = await conn.fetchrow("SELECT min(id) AS lo, max(id) AS hi FROM entries")
    if bounds is None or bounds["hi"] is None:
        return None
    lo, hi = int(bounds["lo"]), int(bounds["hi"])
    if await conn.fetchval("SELECT created_at FROM entries WHERE id = $1", hi) < at:
        return None

    async def reached(mid: int) -> bool:  # monotonic in mid: ids and times grow together
        return bool(
            await conn.fetchval("SELECT created_at >= $2 FROM entries WHERE id >= $1 ORDER BY id LIMIT 1", mid, at)
        )

    while lo < hi:
        mid = (lo + hi) // 2
        if await reached(mid):
            hi = mid
        else:
            lo = mid + 1
    return int(await conn.fetchval("SELECT id FROM entries WHERE id >= $1 ORDER BY id LIMIT 1", lo))


def _public(code: str) -> str:
    return "player" if code == "player" else chart.public_kind(chart.parse(code, stored=True))


async def statement(pool: asyncpg.Pool, request: ledger_pb2.GetStatementRequest) -> ledger_pb2.Statement:
    tenant_id = validate.tenant(request.tenant_id)
    start = _day(request.day)
    end = start + datetime.timedelta(days=1)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        now: datetime.datetime = await conn.fetchval("SELECT clock_timestamp()")
        if start > now:
            raise errors.InvalidRequest(
                "day has not begun yet (days are UTC).", error_code="DAY_IN_THE_FUTURE", extra={"param": "day"}
            )
        first = await first_entry_at(conn, start)
        day_rows: list[Any] = []
        since_start: dict[str, int] = {}
        if first is not None:
            day_rows = await conn.fetch(
                "SELECT CASE WHEN a.kind = 'player' THEN 'player' ELSE a.code END AS account, t.kind,"
                " count(*) AS n, sum(e.amount) AS amount"
                " FROM entries e JOIN accounts a ON a.id = e.account_id JOIN transactions t ON t.id = e.txn_id"
                " WHERE e.tenant_id = $1 AND e.id >= $2 AND e.created_at >= $3 AND e.created_at < $4"
                " GROUP BY 1, 2",
                tenant_id,
                first,
                start,
                end,
            )
            rows = await conn.fetch(
                "SELECT a.kind, sum(e.amount) AS amount FROM entries e JOIN accounts a ON a.id = e.account_id"
                " WHERE e.tenant_id = $1 AND e.id >= $2 AND a.tenant_id = $1 AND a.kind IN ('player', 'revenue')"
                " GROUP BY a.kind",
                tenant_id,
                first,
            )
            since_start = {r["kind"]: int(r["amount"]) for r in rows}
        totals = await conn.fetch(
            "SELECT kind, sum(credits_posted - debits_posted) AS balance FROM accounts"
            " WHERE tenant_id = $1 AND kind IN ('player', 'revenue') GROUP BY kind",
            tenant_id,
        )
    now_balance = {r["kind"]: int(r["balance"]) for r in totals}
    movements: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    day_net: dict[str, int] = defaultdict(int)
    entries = 0
    for r in day_rows:
        account = _public(r["account"])
        movement = movements[(account, r["kind"])]
        movement[0] += int(r["n"])
        movement[1] += int(r["amount"])
        entries += int(r["n"])
        if account in GROUPS:
            day_net[account] += int(r["amount"])
    out = ledger_pb2.Statement(
        tenant_id=tenant_id,
        day=request.day,
        complete=end + datetime.timedelta(seconds=GRACE_S) <= now,
        entries=entries,
        generated_at=grpcutil.timestamp(now),
    )
    for kind, group in GROUPS.items():
        opening = now_balance.get(kind, 0) - since_start.get(kind, 0)
        out.balances.append(
            ledger_pb2.StatementBalance(group=group, opening_minor=opening, closing_minor=opening + day_net[kind])
        )
    for (account, kind), (count, amount) in sorted(movements.items()):
        out.movements.append(ledger_pb2.StatementMovement(account=account, kind=kind, count=count, amount_minor=amount))
    return out


VOLUME_HOURS_DEFAULT = 48
VOLUME_HOURS_MAX = 168
ID_CLOCK_MARGIN_MS = 5 * 60 * 1000


async def volumes(pool: asyncpg.Pool, request: ledger_pb2.GetVolumesRequest) -> ledger_pb2.Volumes:
    """Transactions per hour and kind since the start of the hour `hours - 1` hours ago. Ids are
    time-ordered (`ids.floor`), so the read is an index range of the primary key."""
    hours = request.hours or VOLUME_HOURS_DEFAULT
    if not 1 <= hours <= VOLUME_HOURS_MAX:
        raise errors.InvalidRequest(
            f"hours must be from 1 to {VOLUME_HOURS_MAX}.", error_code="INVALID_PARAMETER", extra={"param": "hours"}
        )
    async with pool.acquire() as conn:
        now: datetime.datetime = await conn.fetchval("SELECT clock_timestamp()")
        since = now.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=hours - 1)
        rows = await conn.fetch(
            "SELECT date_trunc('hour', created_at) AS hour, kind, count(*) AS n FROM transactions"
            " WHERE id >= $1 AND id < 'txn`' AND created_at >= $2 GROUP BY 1, 2 ORDER BY 1, 2",
            # Ids are made by the ledger's clock, created_at by the database's: a margin for the two.
            ids.floor("txn", int(since.timestamp() * 1000) - ID_CLOCK_MARGIN_MS),
            since,
        )
    out = ledger_pb2.Volumes(since=grpcutil.timestamp(since))
    for r in rows:
        out.buckets.append(
            ledger_pb2.VolumeBucket(hour=grpcutil.timestamp(r["hour"]), kind=r["kind"], count=int(r["n"]))
        )
    return out
