"""Spending caps, velocity and decline limits of one player in one tenant.

A purchase takes the player's lock (an advisory lock), sums completed and in-flight orders over the
hour, day and 30 days, and inserts its own order while still holding the lock (see purchases.py), so
concurrent purchases can never together exceed a cap. In-flight includes a 3-D Secure challenge the player has
not finished: it reserves its amount until it is completed, fails, or is cancelled by the recovery
loop after INVO_REQUIRES_ACTION_TIMEOUT_S. Declined, abandoned and refused purchases leave the
caps untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import asyncpg

from services.common import errors, money
from services.common.config import Settings

PERIODS = ("hourly", "daily", "monthly")


class SpendingLimitExceeded(errors.RateLimited):
    default_error = "spending_limit_exceeded"
    default_error_code = "SPENDING_LIMIT_EXCEEDED"


class VelocityLimitExceeded(errors.RateLimited):
    default_error = "velocity_limit_exceeded"
    default_error_code = "VELOCITY_LIMIT_EXCEEDED"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    tenant_id: str
    environment: str
    # The tenant's own cap per period in USD cents; a missing period takes the environment's default.
    caps_usd_cents: Mapping[str, int]


def caps(settings: Settings, limits: Limits) -> dict[str, int]:
    """Each period's cap in USD cents: the tenant's override, else its environment's default."""
    env = "production" if limits.environment == "production" else "sandbox"
    return {
        period: limits.caps_usd_cents[period]
        if period in limits.caps_usd_cents
        else getattr(settings, f"caps_{env}_{period}_usd_cents")
        for period in PERIODS
    }


# pg_advisory_xact_lock's two-key form with this first key: a namespace of its own, apart from the
# one-key (bigint) locks of the ledger and transfers in the same database.
PLAYER_LOCK_CLASS = 0x1A7E_0001


async def lock_player(conn: asyncpg.Connection, tenant_id: str, email: str) -> None:
    """Serialise the purchases of one player (inside the caller's transaction, until it ends).

    A transaction-scoped advisory lock on a hash of (tenant, email): one round trip and no row
    written, where a lock row took an upsert and a SELECT ... FOR UPDATE (issue 18). Two players
    whose hashes collide only wait for each other's reservation, never for more. A replica of the
    previous release, which locked a row of player_locks, takes this same lock through that table's
    trigger (migration 0009), so the two versions serialise a player during a rolling deploy."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2 || chr(31) || $3))", PLAYER_LOCK_CLASS, tenant_id, email
    )


async def check(conn: asyncpg.Connection, settings: Settings, limits: Limits, email: str, usd_cents: int) -> None:
    """Raise if one more purchase of `usd_cents` by this player is over a limit. Call it holding
    the player's lock, in the transaction that then inserts the order."""
    s = settings
    stats = await conn.fetchrow(
        "SELECT"
        " count(*) FILTER (WHERE created_at > now() - interval '1 minute') AS attempts,"
        " count(*) FILTER (WHERE status = 'failed' AND decline_code IS NOT NULL"
        "   AND updated_at > now() - make_interval(secs => $3)) AS declines,"
        " COALESCE(sum(usd_cents) FILTER (WHERE status IN ('completed', 'pending_payment', 'requires_action')"
        "   AND created_at > now() - interval '1 hour'), 0) AS hourly,"
        " COALESCE(sum(usd_cents) FILTER (WHERE status IN ('completed', 'pending_payment', 'requires_action')"
        "   AND created_at > now() - interval '1 day'), 0) AS daily,"
        " COALESCE(sum(usd_cents) FILTER (WHERE status IN ('completed', 'pending_payment', 'requires_action')"
        "   AND created_at > now() - interval '30 days'), 0) AS monthly"
        " FROM orders WHERE tenant_id = $1 AND player_email = $2 AND created_at > now() - interval '30 days'",
        limits.tenant_id,
        email,
        float(s.decline_cooldown_s),
    )
    if stats["attempts"] >= s.purchase_attempts_per_minute_max:
        raise VelocityLimitExceeded(
            f"Too many purchase attempts for this player (at most {s.purchase_attempts_per_minute_max} a minute).",
            retry_after_s=60,
        )
    if stats["declines"] >= s.declines_max:
        raise VelocityLimitExceeded(
            f"Too many declined cards for this player; purchases resume after a cool-down of "
            f"{s.decline_cooldown_s // 60} minutes.",
            error_code="TOO_MANY_DECLINES",
            retry_after_s=s.decline_cooldown_s,
        )
    for period, cap in caps(settings, limits).items():
        if stats[period] + usd_cents > cap:
            left = max(0, cap - stats[period])
            raise SpendingLimitExceeded(
                f"This purchase would exceed the player's {period} spending limit of "
                f"${money.format_usd(cap)} (${money.format_usd(left)} left).",
                extra={"limit": period},
            )
