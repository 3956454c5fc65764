"""State transitions of one kind of row (an order, a transfer, a payout), each with its append-only
audit row, written in the caller's transaction.

A `Lifecycle` names the table, its key and status columns, the audit table and which moves are
allowed. `move()` locks the row, refuses a move the table does not allow (None: the caller decides
whether that is a replay or a race lost), updates the row and appends the audit row in the same
transaction, so no state change is ever without its record and no record without its change.

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

    async def record_created(
        self, conn: asyncpg.Connection, key: str, status: str, *, source: str, reason: str
    ) -> None:
        """The audit row of a row just inserted (from '' to its first status)."""
        if status not in self.allowed:
            raise ValueError(f"{self.table}: unknown status {status!r}")
        await self._audit(conn, key, "", status, source=source, reason=reason)

    async def move(
        self,
        conn: asyncpg.Connection,
        key: str,
        to_status: str,
        *,
        source: str,
        reason: str = "",
        sets: Mapping[str, Any] | None = None,
    ) -> asyncpg.Record | None:
        """Move the row to `to_status` if allowed from its current status, setting `sets` too;
        None when the row is missing or the move not allowed. Call inside a transaction."""
        if not conn.is_in_transaction():
            raise RuntimeError("Lifecycle.move must run inside a transaction")
        if to_status not in self.allowed:
            raise ValueError(f"{self.table}: unknown status {to_status!r}")
        current = await conn.fetchval(
            f"SELECT {self.status_column} FROM {self.table} WHERE {self.key_column} = $1 FOR UPDATE", key
        )
        if current is None or not self.can_move(current, to_status):
            return None
        values = {_identifier(col): value for col, value in (sets or {}).items()}
        values[self.status_column] = to_status
        assignments = [f"{col} = ${i}" for i, col in enumerate(values, start=2)]
        if self.touched_column is not None:
            assignments.append(f"{self.touched_column} = now()")
        row = await conn.fetchrow(
            f"UPDATE {self.table} SET {', '.join(assignments)} WHERE {self.key_column} = $1 RETURNING {self.columns}",
            key,
            *values.values(),
        )
        await self._audit(conn, key, current, to_status, source=source, reason=reason)
        return row

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
