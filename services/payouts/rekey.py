"""Re-encrypt every stored account number under the newest data key.

    INVO_DATA_KEYS="k2:<new key>,k1:<old key>" python -m services.payouts.rekey

A key rotates in three steps: put the new key first in INVO_DATA_KEYS (it seals from then on,
every listed key still opens) and restart the payouts service; run this command (rows sealed under
any other key are opened and sealed again under the first one, a batch per transaction, safe to run
again or beside the service); once it reports none left, drop the old key. It prints counts, never
a number.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from services.common import db
from services.common.config import Settings
from services.common.crypto import Keyring
from services.payouts.bank import Vault

BATCH = 500


async def rekey(pool: asyncpg.Pool, vault: Vault) -> int:
    """Rows moved to the newest key; returns when none is sealed under another."""
    moved = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT payout_id, account_kid, account_sealed FROM payouts WHERE account_kid <> $1"
                " ORDER BY payout_id LIMIT $2 FOR UPDATE SKIP LOCKED",
                vault.active_kid,
                BATCH,
            )
            for r in rows:
                number = vault.open(r["account_kid"], bytes(r["account_sealed"]), payout_id=r["payout_id"])
                sealed = vault.seal(number, payout_id=r["payout_id"])
                await conn.execute(
                    "UPDATE payouts SET account_kid = $2, account_sealed = $3 WHERE payout_id = $1",
                    r["payout_id"],
                    sealed.kid,
                    sealed.blob,
                )
        moved += len(rows)
        if len(rows) < BATCH:
            return moved


async def _main() -> int:
    settings = Settings.from_env()
    settings.require("database_url", "data_keys")
    pool = await db.create_pool(
        settings.database_url,
        settings.schema("payouts"),
        application_name="invo-payouts-rekey",
        max_size=2,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    try:
        vault = Vault(Keyring(settings.data_keys))
        moved = await rekey(pool, vault)
        left = await pool.fetchval("SELECT count(*) FROM payouts WHERE account_kid <> $1", vault.active_kid)
    finally:
        await pool.close()
    print(f"re-encrypted {moved} account numbers under key {vault.active_kid!r}; {left} left under other keys")
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
