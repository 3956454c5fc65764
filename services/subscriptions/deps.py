"""What every step of a subscription works with, built once by `service.setup`."""

from __future__ import annotations

import dataclasses

import asyncpg

from services.subscriptions.charges import Charger
from services.subscriptions.store import Clock, SubscriptionStore


@dataclasses.dataclass(frozen=True, kw_only=True)
class Deps:
    pool: asyncpg.Pool
    store: SubscriptionStore
    clock: Clock
    charger: Charger
    retry_schedule_s: tuple[float, ...]  # past_due retries, seconds after the due time
    lease_s: float
    batch: int = 20
