"""State transitions of one kind of row (an order, a transfer, a payout), each with its append-only
audit row, written in the same statement (inside the caller's transaction, if it has one).

A `Lifecycle` names the table, its key and status columns, the audit table and which moves are
allowed. `move()` locks the row, refuses a move the table does not allow (None: the caller decides
whether that is a replay or a race lost), updates the row and appends the audit row in one
statement, so no state change is ever without its record and no record without its change.
`insert()` writes a new row and its first audit row in one statement likewise. One statement each,
not three round trips: issue 18 measured every round trip of a currency purchase.

The audit table has the columns `(<key column>, from_status, to_status, source, reason,
created_at)` and is append-only: its migration adds rules that turn UPDATE and DELETE into
nothing (see services/payments/migrations/0002_orders.sql).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import asyncpg

from services.common import events


@dataclasses.dataclass(frozen=True)
class Event:
    """An event a move announces: written to the outbox of the connection's schema with the move."""

    tenant_id: str
    event_type: str
    data: dict[str, Any]


_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
REASON_LEN_MAX = 500


def _identifier(name: str) -> str:
    # Names are interpolated into SQL: only plain lower-case identifiers written in code pass.
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lifecycle:
    table: str
    key_column: str
    audit_table: str
    allowed: Mapping[str, frozenset[str]]  # from status -> the statuses it may move to
    columns: str = "*"  # what move() returns
    status_column: str = "status"
    touched_column: str | None = "updated_at"  # set to now() on every move, if any

    def __post_init__(self) -> None:
        for name in (self.table, self.key_column, self.audit_table, self.status_column):
            _identifier(name)
        if self.touched_column is not None:
            _identifier(self.touched_column)
        targets = {to for tos in self.allowed.values() for to in tos}
        unknown = targets - set(self.allowed)
        if unknown:
            raise ValueError(f"{self.table}: moves to statuses with no entry of their own: {sorted(unknown)}")

    def can_move(self, from_status: str, to_status: str) -> bool:
        return to_status in self.allowed.get(from_status, frozenset())

    async def insert(self, conn: asyncpg.Connection, insert_sql: str, *args: Any, source: str, reason: str) -> Any:
        """Run `insert_sql` (an INSERT of one row into the table, without RETURNING; ON CONFLICT DO
        NOTHING allowed) and, if it inserted, the row's first audit row (from '' to its status), as
        one statement. Returns the row (`columns`), or None when nothing was inserted."""
        n = len(args)
        return await conn.fetchrow(
            f"WITH new AS ({insert_sql} RETURNING {self.columns}),"
            f" audit AS (INSERT INTO {self.audit_table} ({self.key_column}, from_status, to_status, source, reason)"
            f" SELECT {self.key_column}, '', {self.status_column}, ${n + 1}, ${n + 2} FROM new)"
            " SELECT * FROM new",
            *args,
            source,
            reason[:REASON_LEN_MAX],
        )

    async def move(
        self,
        conn: asyncpg.Connection | asyncpg.Pool,
        key: str,
        to_status: str,
        *,
        source: str,
        reason: str = "",
        sets: Mapping[str, Any] | None = None,
        event: Event | None = None,
    ) -> asyncpg.Record | None:
        """Move the row to `to_status` if allowed from its current status, setting `sets` too, and
        write `event` to the outbox if it moved; None when the row is missing or the move not
        allowed. One statement: outside a transaction it is one of its own; inside one, the row
        stays locked until it ends, whether it moved or not.

        `cur` locks the row and reads its status as of the lock (a concurrent move commits first
        and is seen); the update, the audit row and the event happen only from a status that may
        move to `to_status`."""
        if to_status not in self.allowed:
            raise ValueError(f"{self.table}: unknown status {to_status!r}")
        values = {_identifier(col): value for col, value in (sets or {}).items()}
        values[self.status_column] = to_status
        assignments = [f"{col} = ${i}" for i, col in enumerate(values, start=2)]
        if self.touched_column is not None:
            assignments.append(f"{self.touched_column} = now()")
        n = len(values) + 1
        froms = sorted(s for s, tos in self.allowed.items() if to_status in tos)
        returning = f"{self.table}.*" if self.columns == "*" else self.columns
        outbox, event_args = "", []
        if event is not None:
            event_ids, tenant_ids, types, bodies = events.outbox_rows([(event.tenant_id, event.event_type, event.data)])
            event_args = [event_ids[0], tenant_ids[0], types[0], bodies[0]]
            outbox = (
                ", event AS (INSERT INTO outbox (event_id, tenant_id, event_type, body)"
                f" SELECT ${n + 5}, ${n + 6}, ${n + 7}, ${n + 8} WHERE EXISTS (SELECT FROM moved))"
            )
        return await conn.fetchrow(
            f"WITH cur AS (SELECT {self.status_column} AS cur_status FROM {self.table}"
            f" WHERE {self.key_column} = $1 FOR UPDATE),"
            f" moved AS (UPDATE {self.table} SET {', '.join(assignments)} FROM cur"
            f" WHERE {self.key_column} = $1 AND cur.cur_status = ANY(${n + 1}::text[]) RETURNING {returning}),"
            f" audit AS (INSERT INTO {self.audit_table} ({self.key_column}, from_status, to_status, source, reason)"
            f" SELECT $1, cur.cur_status, ${n + 2}, ${n + 3}, ${n + 4} FROM cur WHERE EXISTS (SELECT FROM moved))"
            f"{outbox} SELECT * FROM moved",
            key,
            *values.values(),
            froms,
            to_status,
            source,
            reason[:REASON_LEN_MAX],
            *event_args,
        )

    async def note(self, conn: asyncpg.Connection, key: str, status: str, *, source: str, reason: str) -> None:
        """An audit row for a decision that does not move the row (the first of two approvals):
        from and to are both its current `status`. Call inside the transaction of the decision."""
        if not conn.is_in_transaction():
            raise RuntimeError("Lifecycle.note must run inside a transaction")
        if status not in self.allowed:
            raise ValueError(f"{self.table}: unknown status {status!r}")
        await self._audit(conn, key, status, status, source=source, reason=reason)

    async def history(self, conn: asyncpg.Connection | asyncpg.Pool, key: str) -> list[asyncpg.Record]:
        """Every transition of one row, oldest first."""
        return list(
            await conn.fetch(
                f"SELECT from_status, to_status, source, reason, created_at FROM {self.audit_table}"
                f" WHERE {self.key_column} = $1 ORDER BY id",
                key,
            )
        )

    async def _audit(
        self, conn: asyncpg.Connection, key: str, from_status: str, to_status: str, *, source: str, reason: str
    ) -> None:
        await conn.execute(
            f"INSERT INTO {self.audit_table} ({self.key_column}, from_status, to_status, source, reason)"
            " VALUES ($1, $2, $3, $4, $5)",
            key,
            from_status,
            to_status,
            source,
            reason[:REASON_LEN_MAX],
        )
