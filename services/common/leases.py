"""Leases on rows: while a worker talks to an outside party about a row (the processor about an
order, the ACH provider about a payout), nobody else does; if the worker dies, the lease runs out
and another worker (a client's retry, a recovery loop) takes the row over.

A lease is a timestamp column (`processing_until`): NULL or in the past means free. Claims are one
conditional UPDATE each, so two workers can never both hold a row; a batch claim skips rows that
another transaction has locked instead of waiting for them.

`where` arguments are SQL conditions written in code (never values from a request); values go as
parameters.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import asyncpg

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lease:
    table: str
    key_column: str
    duration_s: float  # longer than the slowest outside call the holder makes, with a margin
    until_column: str = "processing_until"
    columns: str = "*"  # what a claim returns

    def __post_init__(self) -> None:
        for name in (self.table, self.key_column, self.until_column):
            _identifier(name)
        if self.duration_s <= 0:
            raise ValueError("a lease must last a positive time")

    def _free(self) -> str:
        return f"({self.until_column} IS NULL OR {self.until_column} <= now())"

    async def claim(
        self, conn: asyncpg.Connection | asyncpg.Pool, key: str, *, where: str = "TRUE"
    ) -> asyncpg.Record | None:
        """Take the lease of one row if it is free and `where` holds; None if someone holds it."""
        return await conn.fetchrow(
            f"UPDATE {self.table} SET {self.until_column} = now() + make_interval(secs => $2)"
            f" WHERE {self.key_column} = $1 AND ({where}) AND {self._free()} RETURNING {self.columns}",
            key,
            self.duration_s,
        )

    async def claim_batch(
        self,
        conn: asyncpg.Connection | asyncpg.Pool,
        *,
        where: str,
        order_by: str,
        limit: int,
        args: Sequence[object] = (),
    ) -> list[asyncpg.Record]:
        """Take the leases of up to `limit` free rows where `where` holds, in `order_by` order.
        `where` takes its values from `args` as $3, $4, ... ($1 and $2 are the lease's own)."""
        if limit < 1:
            raise ValueError("limit must be positive")
        return list(
            await conn.fetch(
                f"UPDATE {self.table} SET {self.until_column} = now() + make_interval(secs => $1)"
                f" WHERE {self.key_column} IN (SELECT {self.key_column} FROM {self.table}"
                f"   WHERE ({where}) AND {self._free()} ORDER BY {order_by} LIMIT $2 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {self.columns}",
                self.duration_s,
                limit,
                *args,
            )
        )

    async def release(self, conn: asyncpg.Connection | asyncpg.Pool, key: str) -> None:
        """Give the lease up at once (the holder's outcome is unknown: let the next one ask again)."""
        await conn.execute(f"UPDATE {self.table} SET {self.until_column} = NULL WHERE {self.key_column} = $1", key)
