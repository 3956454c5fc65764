"""Re-encrypting one table's sealed column under the newest data key: the loop and the command
line that `services.payouts.rekey` (account numbers) and `services.tenants.rekey` (webhook signing
secrets) each run for their own table.

Rows sealed under any key but the active one are opened and sealed again under it, a batch per
transaction (`FOR UPDATE SKIP LOCKED`: safe to run again, or beside the service). The command
prints counts, never a secret, and exits 1 while rows are left under other keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import asyncpg

from services.common import db
from services.common.config import Settings

BATCH = 500
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# A row as read (its key, its key id, its sealed bytes and `context`) -> (new key id, new bytes).
Reseal = Callable[[asyncpg.Record], tuple[str, bytes]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SealedColumn:
    table: str
    key_column: str
    kid_column: str
    blob_column: str
    context: tuple[str, ...] = ()  # more columns the reseal needs (what the seal is bound to)

    def __post_init__(self) -> None:
        for name in (self.table, self.key_column, self.kid_column, self.blob_column, *self.context):
            if not _IDENTIFIER.match(name):  # interpolated into SQL: plain identifiers written in code only
                raise ValueError(f"not a plain SQL identifier: {name!r}")


async def rekey(pool: asyncpg.Pool, col: SealedColumn, active_kid: str, reseal: Reseal) -> int:
    """Rows moved to `active_kid`; returns when none is sealed under another."""
    columns = ", ".join((col.key_column, col.kid_column, col.blob_column, *col.context))
    moved = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT {columns} FROM {col.table} WHERE {col.kid_column} <> $1"
                f" ORDER BY {col.key_column} LIMIT $2 FOR UPDATE SKIP LOCKED",
                active_kid,
                BATCH,
            )
            for r in rows:
                kid, blob = reseal(r)
                await conn.execute(
                    f"UPDATE {col.table} SET {col.kid_column} = $2, {col.blob_column} = $3 WHERE {col.key_column} = $1",
                    r[col.key_column],
                    kid,
                    blob,
                )
        moved += len(rows)
        if len(rows) < BATCH:
            return moved


async def main(service: str, col: SealedColumn, what: str, resealer: Callable[[Settings], tuple[str, Reseal]]) -> int:
    """The command line for `service`'s schema: `resealer(settings)` gives the active key id and
    the reseal; prints what moved and what is left under other keys (exit 1 while any is)."""
    settings = Settings.from_env()
    settings.require("database_url", "data_keys")
    active_kid, reseal = resealer(settings)
    pool = await db.create_pool(
        settings.database_url,
        settings.schema(service),
        application_name=f"invo-{service}-rekey",
        max_size=2,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    try:
        moved = await rekey(pool, col, active_kid, reseal)
        left = await pool.fetchval(f"SELECT count(*) FROM {col.table} WHERE {col.kid_column} <> $1", active_kid)
    finally:
        await pool.close()
    print(f"re-encrypted {moved} {what} under key {active_kid!r}; {left} left under other keys")
    return 0 if left == 0 else 1
