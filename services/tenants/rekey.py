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

from services.common import rekey as common
from services.common.config import Settings
from services.common.crypto import Keyring

SECRETS = common.SealedColumn(
    table="webhook_secrets",
    key_column="secret_id",
    kid_column="data_key_id",
    blob_column="sealed",
    context=("tenant_id",),
)


def _resealer(settings: Settings) -> tuple[str, common.Reseal]:
    keyring = Keyring(settings.data_keys)

    def reseal(r: asyncpg.Record) -> tuple[str, bytes]:
        secret = keyring.open(r["data_key_id"], bytes(r["sealed"]), aad=r["tenant_id"])
        return keyring.seal(secret, aad=r["tenant_id"])

    return keyring.active_kid, reseal


if __name__ == "__main__":
    sys.exit(asyncio.run(common.main("tenants", SECRETS, "webhook signing secrets", _resealer)))
