"""What every step of a payout works with, built once by `service.setup`."""

from __future__ import annotations

import dataclasses

import asyncpg

from services.payouts.bank import Vault
from services.payouts.ledger_client import PayoutLedger
from services.payouts.provider import AchProvider
from services.payouts.store import PayoutStore


@dataclasses.dataclass(frozen=True, kw_only=True)
class Deps:
    pool: asyncpg.Pool
    store: PayoutStore
    ledger: PayoutLedger
    provider: AchProvider
    vault: Vault
    pepper: str  # keys the HMAC of an account number inside an idempotency fingerprint
    min_usd_cents: int
    dual_approval_usd_cents: int  # above this, two different approvers
    lease_s: float
