"""Subscription rows: reads, pages, the lease one actor holds while it charges or changes one, and
the clock (the system's, or in tests the one SetTestClock sets, shared by every replica)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import asyncpg

from services.common import errors
from services.common.leases import Lease

SUBSCRIPTION_ID_RE = re.compile(r"^sub_[0-9A-Z]{26}$")
PUBLIC_STATUSES = ("trialing", "active", "past_due", "cancelled")
PAGE_MAX = 100
COLUMNS = (
    "subscription_id, tenant_id, environment, player_email, plan_id, plan_name, price_minor, interval,"
    " interval_count, trial_days, metadata::text AS metadata_json, idempotency_key, request_hash, status, anchor,"
    " periods_paid, current_period_start, current_period_end, trial_end, cancel_at_period_end,"
    " cancellation_reason, cancelled_at, failed_attempts, next_attempt_at, last_failure, created_at, updated_at,"
    " refund_period, refund_partner_minor, refund_fee_minor, refund_transaction_id, refund_decided_at,"
    " pending_period, pending_fee_bps, pending_currency_name, processing_until"
)
CHARGE_COLUMNS = (
    "subscription_id, period, transaction_id, total_minor, partner_amount_minor, network_fee_minor,"
    " new_balance_minor, period_start, period_end, charged_at"
)


def not_found() -> errors.NotFound:
    return errors.NotFound("No such subscription.", error_code="SUBSCRIPTION_NOT_FOUND")


def in_progress() -> errors.Conflict:
    """A create whose row another worker holds (still charging its first period)."""
    return errors.Conflict(
        "This subscription is being created; retry with the same idempotency_key.",
        error_code="SUBSCRIPTION_IN_PROGRESS",
    )


class Clock:
    """The service's time. With the test clock on, the time SetTestClock last set (the system's
    until then); read from the database, so every replica agrees."""

    def __init__(self, pool: asyncpg.Pool, *, test: bool) -> None:
        self.pool = pool
        self.test = test

    async def now(self, conn: Any = None) -> datetime.datetime:
        if self.test:
            at = await (conn or self.pool).fetchval("SELECT now FROM test_clock WHERE id = 1")
            if at is not None:
                return at
        return datetime.datetime.now(datetime.UTC)

    async def set(self, at: datetime.datetime) -> None:
        if not self.test:
            raise errors.Forbidden("The test clock is off.", error_code="TEST_CLOCK_OFF")
        await self.pool.execute(
            "INSERT INTO test_clock (id, now) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET now = EXCLUDED.now", at
        )


class SubscriptionStore:
    def __init__(self, pool: asyncpg.Pool, *, lease_s: float) -> None:
        self.pool = pool
        self.lease = Lease(table="subscriptions", key_column="subscription_id", duration_s=lease_s, columns=COLUMNS)

    async def find(self, subscription_id: str, conn: Any = None) -> asyncpg.Record | None:
        if not SUBSCRIPTION_ID_RE.match(subscription_id):
            return None
        return await (conn or self.pool).fetchrow(
            f"SELECT {COLUMNS} FROM subscriptions WHERE subscription_id = $1 AND status <> 'creating'",
            subscription_id,
        )

    async def visible(self, subscription_id: str, tenant_id: str) -> asyncpg.Record:
        row = await self.find(subscription_id)
        if row is None or row["tenant_id"] != tenant_id:
            raise not_found()
        return row

    async def last_charges(self, ids: list[str]) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch(
            f"SELECT DISTINCT ON (subscription_id) {CHARGE_COLUMNS} FROM subscription_charges"
            " WHERE subscription_id = ANY($1::text[]) ORDER BY subscription_id, period DESC",
            ids,
        )
        return {r["subscription_id"]: r for r in rows}

    async def charge(self, subscription_id: str, period: int) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT {CHARGE_COLUMNS} FROM subscription_charges WHERE subscription_id = $1 AND period = $2",
            subscription_id,
            period,
        )

    async def page(
        self, *, tenant_id: str, player_email: str, status: str, starting_after: str, limit: int
    ) -> tuple[list[asyncpg.Record], bool]:
        if not 1 <= limit <= PAGE_MAX:
            raise errors.InvalidRequest(
                f"limit must be from 1 to {PAGE_MAX}.", error_code="INVALID_PARAMETER", extra={"param": "limit"}
            )
        if starting_after and not SUBSCRIPTION_ID_RE.match(starting_after):
            raise errors.InvalidRequest(
                "starting_after must be a subscription id.",
                error_code="INVALID_PARAMETER",
                extra={"param": "starting_after"},
            )
        where = ["tenant_id = $1", "status <> 'creating'"]
        args: list[Any] = [tenant_id]
        if player_email:
            args.append(player_email)
            where.append(f"player_email = ${len(args)}")
        if status:
            args.append(status)
            where.append(f"status = ${len(args)}")
        if starting_after:
            args.append(starting_after)
            where.append(f"subscription_id < ${len(args)}")  # newest first
        args.append(limit + 1)
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM subscriptions WHERE {' AND '.join(where)}"
            f" ORDER BY subscription_id DESC LIMIT ${len(args)}",
            *args,
        )
        return list(rows[:limit]), len(rows) > limit
