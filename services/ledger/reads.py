"""The ledger's reads, straight from SQL: balances, transactions, entries, exports, revenue and
the whole-ledger check. None of them takes the write lock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
from invo.v1 import ledger_pb2

from services.common import errors, grpcutil
from services.ledger import chart, validate

PROBLEMS_MAX = 100
_ts = grpcutil.timestamp


def balance_message(info: chart.AccountInfo, balance: int, pending: int) -> ledger_pb2.AccountBalance:
    return ledger_pb2.AccountBalance(
        account=info.code,
        balance_minor=balance,
        pending_minor=pending,
        available_minor=balance - pending,
        player_email=info.player_email or "",
    )


async def balances(pool: asyncpg.Pool, infos: list[chart.AccountInfo]) -> list[ledger_pb2.AccountBalance]:
    """Balances of the accounts (already checked by the caller) in the order asked; an unknown
    account reads as zero."""
    rows = await pool.fetch(
        "SELECT code, credits_posted - debits_posted AS balance, debits_pending FROM accounts"
        " WHERE code = ANY($1::text[])",
        [info.code for info in infos],
    )
    found = {r["code"]: (r["balance"], r["debits_pending"]) for r in rows}
    return [balance_message(info, *found.get(info.code, (0, 0))) for info in infos]


async def transaction(pool: asyncpg.Pool, transaction_id: str, tenant_id: str) -> ledger_pb2.Transaction:
    row = await pool.fetchrow(
        "SELECT id, tenant_id, kind, status, postings, metadata, created_at, expires_at"
        " FROM transactions WHERE id = $1 AND tenant_id = $2",
        transaction_id,
        tenant_id,
    )
    if row is None:
        raise errors.NotFound("No such transaction.", error_code="TRANSACTION_NOT_FOUND")
    return ledger_pb2.Transaction(
        transaction_id=row["id"],
        tenant_id=row["tenant_id"],
        kind=row["kind"],
        status=row["status"],
        postings=[
            ledger_pb2.Posting(account=p["account"], amount_minor=p["amount"]) for p in json.loads(row["postings"])
        ],
        metadata_json=row["metadata"],
        created_at=_ts(row["created_at"]),
        expires_at=_ts(row["expires_at"]),
    )


_ENTRY_COLUMNS = "e.id, e.txn_id, e.tenant_id, a.code, e.amount, e.balance_after, t.kind, e.created_at"


async def entries(pool: asyncpg.Pool, request: ledger_pb2.ListEntriesRequest) -> ledger_pb2.ListEntriesResponse:
    """Every entry tagged with the tenant, in id order (ids commit in order: a cursor never skips);
    or one account's, named by its code or, for a player's wallet, by the player's email; or that
    account's latest, newest first."""
    tenant_id = validate.tenant(request.tenant_id)
    limit = validate.limit(request.limit, default=100, most=validate.ENTRIES_LIMIT_MAX)
    joins = " FROM entries e JOIN accounts a ON a.id = e.account_id JOIN transactions t ON t.id = e.txn_id"
    account = request.account
    if request.player_email:
        if account:
            raise errors.InvalidRequest("account or player_email, not both")
        account = chart.player(tenant_id, request.player_email)
    if request.newest_first:
        if not account:
            raise errors.InvalidRequest("newest_first reads one account: name it")
        rows = await pool.fetch(
            f"SELECT {_ENTRY_COLUMNS}{joins} WHERE a.code = $1 AND e.tenant_id = $2 ORDER BY e.id DESC LIMIT $3",
            account,
            tenant_id,
            limit + 1,
        )
    elif account:
        chart.parse(account)
        rows = await pool.fetch(
            f"SELECT {_ENTRY_COLUMNS}{joins}"
            " WHERE a.code = $1 AND e.tenant_id = $2 AND e.id > $3 ORDER BY e.id LIMIT $4",
            account,
            tenant_id,
            request.after_entry_id,
            limit + 1,
        )
    else:
        rows = await pool.fetch(
            f"SELECT {_ENTRY_COLUMNS}{joins} WHERE e.tenant_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
            tenant_id,
            request.after_entry_id,
            limit + 1,
        )
    out = []
    for r in rows[:limit]:
        info = chart.parse(r["code"], stored=True)
        out.append(
            ledger_pb2.Entry(
                entry_id=r["id"],
                transaction_id=r["txn_id"],
                account=r["code"],
                amount_minor=r["amount"],
                balance_after_minor=r["balance_after"],
                kind=r["kind"],
                created_at=_ts(r["created_at"]),
                account_kind=chart.public_kind(info),
                player_email=info.player_email or "",
                account_tenant_id=r["tenant_id"],
            )
        )
    return ledger_pb2.ListEntriesResponse(entries=out, has_more=len(rows) > limit)


async def export(pool: asyncpg.Pool, tenant_id: str, chunk_size: int) -> AsyncIterator[ledger_pb2.ExportBalancesChunk]:
    count = 0
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # One snapshot for the whole export: every row is as of this instant.
        snapshot_at = await conn.fetchval("SELECT now()")
        cursor = await conn.cursor(
            "SELECT player_email, credits_posted - debits_posted AS balance, debits_pending"
            " FROM accounts WHERE kind = 'player' AND tenant_id = $1 ORDER BY player_email",
            tenant_id,
        )
        while True:
            rows = await cursor.fetch(chunk_size)
            if not rows:
                break
            count += len(rows)
            yield ledger_pb2.ExportBalancesChunk(
                balances=[
                    ledger_pb2.AccountBalance(
                        account=r["player_email"],
                        balance_minor=r["balance"],
                        pending_minor=r["debits_pending"],
                        available_minor=r["balance"] - r["debits_pending"],
                        player_email=r["player_email"],
                    )
                    for r in rows
                ]
            )
    yield ledger_pb2.ExportBalancesChunk(last=True, count=count, snapshot_at=_ts(snapshot_at))


# The revenue account's totals and what ACH returns credited back to it. Only payouts debit a
# revenue account (posted: paid out; pending: held; the generic Transfer aside, for tests), so
# the totals answer all but the returns, summed from their own transactions through a partial
# index (migration 0004) of `payout_return` transactions only: returns are rare, so the read
# stays a few index rows, and the write path keeps no extra total on its hot revenue rows.
REVENUE_SQL = (
    "SELECT COALESCE(a.credits_posted, 0) AS credits, COALESCE(a.debits_posted, 0) AS debits,"
    " COALESCE(a.debits_pending, 0) AS held,"
    " (SELECT COALESCE(sum((p->>'amount')::bigint), 0) FROM transactions t, jsonb_array_elements(t.postings) p"
    "  WHERE t.tenant_id = $2 AND t.kind = 'payout_return' AND p->>'account' = $1)::bigint AS returned"
    " FROM (VALUES (1)) AS one LEFT JOIN accounts a ON a.code = $1"
)


async def revenue(pool: asyncpg.Pool, tenant_id: str) -> ledger_pb2.Revenue:
    row = await pool.fetchrow(REVENUE_SQL, chart.revenue(tenant_id), tenant_id)
    credits, debits, held, returned = row["credits"], row["debits"], row["held"], row["returned"]
    return ledger_pb2.Revenue(
        owed_minor=credits - debits,
        paid_out_minor=debits - returned,
        lifetime_minor=credits - returned,
        held_minor=held,
        available_minor=credits - debits - held,
        returned_minor=returned,
    )


async def check(pool: asyncpg.Pool) -> ledger_pb2.CheckResponse:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # Checks read the whole ledger: they get a longer statement timeout than requests.
        await conn.execute("SET LOCAL statement_timeout = '120s'")
        total, accounts = await conn.fetchrow(
            "SELECT COALESCE(sum(credits_posted - debits_posted), 0)::bigint, count(*) FROM accounts"
        )
        negative = await conn.fetch(
            "SELECT code, credits_posted - debits_posted AS balance, debits_pending FROM accounts"
            " WHERE constrained AND kind <> 'player' AND credits_posted - debits_posted - debits_pending < 0"
            " ORDER BY id LIMIT $1",
            PROBLEMS_MAX,
        )
        debts = await conn.fetchval(
            "SELECT count(*) FROM accounts WHERE kind = 'player' AND credits_posted < debits_posted"
        )
        unbalanced = await conn.fetch(
            "SELECT txn_id FROM entries GROUP BY txn_id HAVING sum(amount) <> 0 LIMIT $1", PROBLEMS_MAX
        )
        drifted = await conn.fetch(
            "SELECT a.code FROM accounts a LEFT JOIN ("
            "  SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id"
            ") e ON e.account_id = a.id"
            " WHERE a.credits_posted - a.debits_posted <> COALESCE(e.total, 0)"
            " UNION ALL "
            "SELECT a.code FROM accounts a LEFT JOIN ("
            "  SELECT p->>'account' AS code,"
            "         sum(CASE WHEN (p->>'amount')::bigint < 0 THEN -(p->>'amount')::bigint ELSE 0 END) AS d,"
            "         sum(CASE WHEN (p->>'amount')::bigint > 0 THEN (p->>'amount')::bigint ELSE 0 END) AS c"
            "  FROM transactions t, jsonb_array_elements(t.postings) p WHERE t.status = 'pending' GROUP BY 1"
            ") h ON h.code = a.code"
            " WHERE a.debits_pending <> COALESCE(h.d, 0) OR a.credits_pending <> COALESCE(h.c, 0)"
            " LIMIT $1",
            PROBLEMS_MAX,
        )
        transactions = await conn.fetchval("SELECT count(*) FROM transactions")
    return ledger_pb2.CheckResponse(
        ok=total == 0 and not negative and not unbalanced and not drifted,
        total_balance_minor=total,
        negative_accounts=[
            balance_message(chart.parse(r["code"], stored=True), r["balance"], r["debits_pending"]) for r in negative
        ],
        unbalanced_transactions=[r["txn_id"] for r in unbalanced],
        drifted_accounts=[r["code"] for r in drifted],
        player_debts=debts,
        accounts=accounts,
        transactions=transactions,
    )
