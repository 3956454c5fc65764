"""Bank details: checked, sealed, and shown only as their last four digits.

A routing number is nine digits with the ABA checksum (`python-stdnum`'s `us.rtn`); an account
number 4 to 17 digits (the NACHA field). The account number is sealed with AES-256-GCM under the
first key of INVO_DATA_KEYS, the key's id stored beside it and the payout id as associated data (a
sealed number copied onto another payout does not open); any listed key opens, so a key rotates
by putting the new one first and running `python -m services.payouts.rekey`. It is opened only to
send the payment order to the provider. Only its last four digits are stored in the clear.
"""

from __future__ import annotations

import dataclasses

from stdnum.us import rtn

from services.common import errors
from services.common.crypto import Keyring

ACCOUNT_DIGITS_MIN = 4
ACCOUNT_DIGITS_MAX = 17
ACCOUNT_TYPES = ("checking", "savings")


def routing_number(value: str) -> str:
    if len(value) != 9 or not value.isascii() or not value.isdigit() or not rtn.is_valid(value):
        raise errors.InvalidRequest(
            "routing_number must be a 9-digit ABA routing number with a valid checksum.",
            error_code="INVALID_ROUTING_NUMBER",
            extra={"param": "routing_number"},
        )
    return value


def account_number(value: str) -> str:
    if not ACCOUNT_DIGITS_MIN <= len(value) <= ACCOUNT_DIGITS_MAX or not value.isascii() or not value.isdigit():
        raise errors.InvalidRequest(
            f"account_number must be {ACCOUNT_DIGITS_MIN} to {ACCOUNT_DIGITS_MAX} digits.",
            error_code="INVALID_ACCOUNT_NUMBER",
            extra={"param": "account_number"},
        )
    return value


@dataclasses.dataclass(frozen=True)
class Sealed:
    kid: str
    blob: bytes
    last4: str


class Vault:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def seal(self, number: str, *, payout_id: str) -> Sealed:
        kid, blob = self.keyring.seal(number, aad=f"payout:{payout_id}")
        return Sealed(kid, blob, number[-4:])

    def open(self, kid: str, blob: bytes, *, payout_id: str) -> str:
        return self.keyring.open(kid, blob, aad=f"payout:{payout_id}")

    @property
    def active_kid(self) -> str:
        return self.keyring.active_kid
