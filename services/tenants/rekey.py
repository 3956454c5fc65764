"""Re-encrypt every tenant's webhook signing secret under the newest data key.

    INVO_DATA_KEYS="k2:<new key>,k1:<old key>" python -m services.tenants.rekey

The tenants' half of a data key rotation (k8s/README.md, "Rotate a secret"; the payouts' half is
`services.payouts.rekey`): put the new key first in INVO_DATA_KEYS and restart the tenants service
(it seals under the first key from then on, every listed key still opens); run this (rows sealed
under any other key are opened and sealed again under the first one, a batch per transaction, safe
to run again or beside the service); once it reports none left, drop the old key. Expired secrets
are re-sealed too: they are kept, and a key must never be dropped while a row needs it. It prints
counts, never a secret.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from services.common import db
from services.common.config import Settings
from services.common.crypto import Keyring

BATCH = 500


async def rekey(pool: asyncpg.Pool, keyring: Keyring) -> int:
    """Secrets moved to the newest key; returns when none is sealed under another."""
    moved = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT secret_id, tenant_id, data_key_id, sealed FROM webhook_secrets WHERE data_key_id <> $1"
                " ORDER BY secret_id LIMIT $2 FOR UPDATE SKIP LOCKED",
                keyring.active_kid,
                BATCH,
            )
            for r in rows:
                secret = keyring.open(r["data_key_id"], bytes(r["sealed"]), aad=r["tenant_id"])
                kid, sealed = keyring.seal(secret, aad=r["tenant_id"])
                await conn.execute(
                    "UPDATE webhook_secrets SET data_key_id = $2, sealed = $3 WHERE secret_id = $1",
                    r["secret_id"],
                    kid,
                    sealed,
                )
        moved += len(rows)
        if len(rows) < BATCH:
            return moved


async def _main() -> int:
    settings = Settings.from_env()
    settings.require("database_url", "data_keys")
    pool = await db.create_pool(
        settings.database_url,
        settings.schema("tenants"),
        application_name="invo-tenants-rekey",
        max_size=2,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    try:
        keyring = Keyring(settings.data_keys)
        moved = await rekey(pool, keyring)
        left = await pool.fetchval("SELECT count(*) FROM webhook_secrets WHERE data_key_id <> $1", keyring.active_kid)
    finally:
        await pool.close()
    print(
        f"re-encrypted {moved} webhook signing secrets under key {keyring.active_kid!r}; {left} left under other keys"
    )
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
