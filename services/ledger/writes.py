"""What a batch writes, once every op has been applied in memory: every table in one statement."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from services.common import events

if TYPE_CHECKING:
    from services.ledger.apply import AccountState, HoldState


class Batch:
    """The in-memory state of one batch: what to write once every op has been applied."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now
        self.accounts: dict[str, AccountState] = {}
        self.holds: dict[str, HoldState] = {}
        self.txn_rows: list[tuple[str, str, str, str, str, str, datetime.datetime | None]] = []
        self.txn_status_updates: list[tuple[str, str]] = []
        self.entry_rows: list[tuple[str, str, int, int, int]] = []
        self.idem_rows: list[tuple[str, str, bytes, str | None, str]] = []
        self.events: list[tuple[str, str, dict[str, Any]]] = []  # (tenant_id, event_type, data)


async def write_batch(conn: asyncpg.Connection, b: Batch) -> None:
    """Everything the batch writes, in one statement (data-modifying CTEs all run, and the
    foreign keys are checked at its end): one round trip instead of one per table."""
    stmt = _Statement()
    # A hold resolved in the batch that made it (a payout's hold and release sent at once) is
    # inserted resolved: the UPDATE below cannot see rows inserted by the same statement.
    fresh = {row[0]: i for i, row in enumerate(b.txn_rows)}
    rows, resolved = list(b.txn_rows), [False] * len(b.txn_rows)
    updates = []
    for txn_id, status in b.txn_status_updates:
        i = fresh.get(txn_id)
        if i is None:
            updates.append((txn_id, status))
        else:
            rows[i], resolved[i] = (*rows[i][:3], status, *rows[i][4:]), True
    if rows:
        stmt.add(
            "INSERT INTO transactions (id, tenant_id, kind, status, postings, metadata, expires_at, created_at,"
            " resolved_at)"
            " SELECT t.id, t.tenant_id, t.kind, t.status, t.postings::jsonb, t.metadata::jsonb, t.expires_at, {8},"
            " CASE WHEN t.resolved THEN {8}::timestamptz END"
            " FROM unnest({0}::text[], {1}::text[], {2}::text[], {3}::text[], {4}::text[], {5}::text[],"
            " {6}::timestamptz[], {7}::boolean[]) AS t(id, tenant_id, kind, status, postings, metadata, expires_at,"
            " resolved)",
            *[list(c) for c in zip(*rows, strict=True)],
            resolved,
            b.now,
        )
    if updates:
        stmt.add(
            "UPDATE transactions t SET status = u.status, resolved_at = {2}"
            " FROM unnest({0}::text[], {1}::text[]) AS u(id, status) WHERE t.id = u.id AND t.status = 'pending'",
            [u[0] for u in updates],
            [u[1] for u in updates],
            b.now,
        )
    if b.entry_rows:
        stmt.add(
            "INSERT INTO entries (txn_id, tenant_id, account_id, amount, balance_after, created_at)"
            " SELECT e.*, {5} FROM unnest({0}::text[], {1}::text[], {2}::bigint[], {3}::bigint[], {4}::bigint[])"
            " AS e(txn_id, tenant_id, account_id, amount, balance_after)",
            *[list(c) for c in zip(*b.entry_rows, strict=True)],
            b.now,
        )
    dirty = [a for a in b.accounts.values() if a.dirty]
    if dirty:
        stmt.add(
            "UPDATE accounts a SET debits_posted = u.dp, credits_posted = u.cp, debits_pending = u.dpe,"
            " credits_pending = u.cpe, updated_at = {5}"
            " FROM unnest({0}::bigint[], {1}::bigint[], {2}::bigint[], {3}::bigint[], {4}::bigint[])"
            " AS u(id, dp, cp, dpe, cpe) WHERE a.id = u.id",
            [a.id for a in dirty],
            [a.debits_posted for a in dirty],
            [a.credits_posted for a in dirty],
            [a.debits_pending for a in dirty],
            [a.credits_pending for a in dirty],
            b.now,
        )
    if b.idem_rows:
        stmt.add(
            "INSERT INTO idempotency (scope, key, request_hash, txn_id, result)"
            " SELECT i.scope, i.key, i.h, i.txn_id, i.result::jsonb"
            " FROM unnest({0}::text[], {1}::text[], {2}::bytea[], {3}::text[], {4}::text[])"
            " AS i(scope, key, h, txn_id, result)",
            *[list(c) for c in zip(*b.idem_rows, strict=True)],
        )
    if b.events:
        event_ids, tenant_ids, types, bodies = events.outbox_rows(b.events)
        stmt.add(
            "INSERT INTO outbox (event_id, tenant_id, event_type, body)"
            " SELECT * FROM unnest({0}::text[], {1}::text[], {2}::text[], {3}::text[])",
            event_ids,
            tenant_ids,
            types,
            bodies,
        )
    if stmt.parts:
        await conn.execute(stmt.sql(), *stmt.args)


class _Statement:
    """Several data-modifying statements as the CTEs of one. Each part numbers its own
    parameters {0}, {1}, ...; they become $n in the whole."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, sql: str, *args: Any) -> None:
        base = len(self.args)
        self.parts.append(sql.format(*[f"${base + i + 1}" for i in range(len(args))]))
        self.args.extend(args)

    def sql(self) -> str:
        return "WITH " + ", ".join(f"w{i} AS ({part})" for i, part in enumerate(self.parts)) + " SELECT 1"
