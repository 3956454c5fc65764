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

from services.common import rekey as common
from services.common.config import Settings
from services.common.crypto import Keyring
from services.payouts.bank import Vault

ACCOUNTS = common.SealedColumn(
    table="payouts", key_column="payout_id", kid_column="account_kid", blob_column="account_sealed"
)


def _resealer(settings: Settings) -> tuple[str, common.Reseal]:
    vault = Vault(Keyring(settings.data_keys))

    def reseal(r: asyncpg.Record) -> tuple[str, bytes]:
        number = vault.open(r["account_kid"], bytes(r["account_sealed"]), payout_id=r["payout_id"])
        sealed = vault.seal(number, payout_id=r["payout_id"])
        return sealed.kid, sealed.blob

    return vault.active_kid, reseal


if __name__ == "__main__":
    sys.exit(asyncio.run(common.main("payouts", ACCOUNTS, "account numbers", _resealer)))
