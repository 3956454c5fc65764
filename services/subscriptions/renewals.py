"""Charging a period and what follows from the answer, for the create request, the renewal
scheduler and the recovery of a create a crash interrupted.

One actor at a time: whoever charges or changes a subscription holds its lease (`processing_until`),
taken with the row's lock and released in the transaction that records the outcome. The charge
itself is keyed by (subscription, period) in the ledger, so a lease that ran out under a slow
holder, a crash between the ledger's answer and our commit, or two scheduler replicas racing can
only ever send the same charge again, which the ledger answers with the first result.

- Paid: the charge row (primary key subscription and period), the period moved on, `active`, the
  event (`subscription.created` for a create's first period, else `subscription.renewed`).
- Refused (too little balance, or the player in debt): a create is deleted (the caller hears 402);
  a renewal becomes `past_due`, retried after each step of the schedule counted from the due
  time (so a top-up renews at the next retry), and `cancelled` (payment_failed) after the last.
- The tenant suspended or gone: nothing charged, looked at again in an hour.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from typing import Any

import asyncpg

from services.common import errors, events, money
from services.subscriptions import calendar, messages
from services.subscriptions.charges import Charged, Refused, TenantAway
from services.subscriptions.deps import Deps
from services.subscriptions.store import COLUMNS, in_progress

log = logging.getLogger("invo.subscriptions.renewals")
DEFER = datetime.timedelta(hours=1)


def bounds(row: asyncpg.Record, period: int) -> tuple[datetime.datetime, datetime.datetime]:
    """The start and end of the row's `period`-th paid period."""
    anchor, interval, count = row["anchor"], row["interval"], row["interval_count"]
    return calendar.period_end(anchor, interval, count, period - 1), calendar.period_end(
        anchor, interval, count, period
    )


async def settle(
    d: Deps, row: asyncpg.Record, period: int, paid: Charged, now: datetime.datetime, *, keep_lease: bool = False
) -> asyncpg.Record:
    """Record the period's charge and move the subscription on (a cancel that came in meanwhile,
    through a lease that ran out, stays: the charge was begun before it)."""
    start, end = bounds(row, period)
    async with d.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(
            "SELECT status, periods_paid FROM subscriptions WHERE subscription_id = $1 FOR UPDATE",
            row["subscription_id"],
        )
        inserted = await conn.fetchval(
            "INSERT INTO subscription_charges (subscription_id, period, transaction_id, total_minor,"
            " partner_amount_minor, network_fee_minor, new_balance_minor, period_start, period_end, charged_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING RETURNING period",
            row["subscription_id"],
            period,
            paid.transaction_id,
            paid.total_minor,
            paid.partner_amount_minor,
            paid.network_fee_minor,
            paid.new_balance_minor,
            start,
            end,
            now,
        )
        if inserted is None or before is None or before["periods_paid"] >= period:
            # Recorded already (a replica or an earlier attempt finished it): nothing more.
            done = await conn.fetchrow(
                "UPDATE subscriptions SET processing_until = CASE WHEN $2 THEN processing_until END,"
                f" pending_period = NULL WHERE subscription_id = $1 RETURNING {COLUMNS}",
                row["subscription_id"],
                keep_lease,
            )
            return done
        done = await conn.fetchrow(
            "UPDATE subscriptions SET periods_paid = $2, current_period_start = $3, current_period_end = $4,"
            " pending_period = NULL,"
            " status = CASE WHEN status = 'cancelled' THEN status ELSE 'active' END,"
            " next_attempt_at = CASE WHEN status = 'cancelled' THEN NULL ELSE $4::timestamptz END,"
            " failed_attempts = 0, last_failure = NULL, updated_at = $5,"
            " processing_until = CASE WHEN $6 THEN processing_until END"
            f" WHERE subscription_id = $1 RETURNING {COLUMNS}",
            row["subscription_id"],
            period,
            start,
            end,
            now,
            keep_lease,
        )
        kind = messages.CREATED if before["status"] == "creating" else messages.RENEWED
        await events.emit(
            conn, tenant_id=row["tenant_id"], event_type=kind, data=messages.event_data(done, paid, period=period)
        )
    return done


async def fail(
    d: Deps, row: asyncpg.Record, refused: Refused, now: datetime.datetime, *, keep_lease: bool = False
) -> asyncpg.Record:
    """A renewal refused: past_due until the schedule runs out, then cancelled. Each retry is at
    its step after the due time, and never sooner after the last try than the schedule's gap
    between the two steps: a round that comes late (the loop was down for a day) does not run
    through every retry at once, leaving the player no time to top up."""
    attempts = row["failed_attempts"] + 1
    steps = d.retry_schedule_s
    if attempts > len(steps):
        return await end(d, row, "payment_failed", now, failure=refused.error_code, failed_attempts=attempts)
    unpaid = bounds(row, row["periods_paid"] + 1)
    due = unpaid[0]
    gap = steps[attempts - 1] - (steps[attempts - 2] if attempts >= 2 else 0.0)
    retry_at = max(due + datetime.timedelta(seconds=steps[attempts - 1]), now + datetime.timedelta(seconds=gap))
    async with d.pool.acquire() as conn, conn.transaction():
        done = await conn.fetchrow(
            "UPDATE subscriptions SET status = 'past_due', failed_attempts = $2, next_attempt_at = $3,"
            " last_failure = $4, pending_period = NULL, updated_at = $5,"
            " processing_until = CASE WHEN $6 THEN processing_until END"
            f" WHERE subscription_id = $1 AND status IN ('trialing', 'active', 'past_due') RETURNING {COLUMNS}",
            row["subscription_id"],
            attempts,
            retry_at,
            refused.error_code,
            now,
            keep_lease,
        )
        if done is not None and row["status"] != "past_due":
            await events.emit(
                conn,
                tenant_id=row["tenant_id"],
                event_type=messages.PAST_DUE,
                data=messages.event_data(done, period=row["periods_paid"] + 1, dates=unpaid),
            )
    return done or row


async def end(
    d: Deps,
    row: asyncpg.Record,
    reason: str,
    now: datetime.datetime,
    *,
    failure: str | None = None,
    refund_transaction_id: str | None = None,
    failed_attempts: int | None = None,
) -> asyncpg.Record:
    """Cancel now (`requested` by the partner, or `payment_failed`); no period is charged after."""
    async with d.pool.acquire() as conn, conn.transaction():
        done = await conn.fetchrow(
            "UPDATE subscriptions SET status = 'cancelled', cancellation_reason = $2, cancelled_at = $3,"
            " next_attempt_at = NULL, last_failure = coalesce($4, last_failure), processing_until = NULL,"
            " pending_period = NULL, refund_transaction_id = coalesce($5, refund_transaction_id),"
            " failed_attempts = coalesce($6, failed_attempts),"
            f" updated_at = $3 WHERE subscription_id = $1 AND status <> 'cancelled' RETURNING {COLUMNS}",
            row["subscription_id"],
            reason,
            now,
            failure,
            refund_transaction_id,
            failed_attempts,
        )
        if done is None:
            return await d.store.find(row["subscription_id"], conn) or row
        await events.emit(
            conn, tenant_id=row["tenant_id"], event_type=messages.CANCELLED, data=messages.event_data(done)
        )
    return done


async def charge_period(
    d: Deps,
    row: asyncpg.Record,
    now: datetime.datetime,
    *,
    fee_bps: int,
    currency_name: str,
    deadline: float | None,
    keep_lease: bool = False,
) -> asyncpg.Record:
    """Charge the next period: marked pending (with the request's fee and currency name) before
    the ledger is asked, then settled or refused by its definite answer. An unknown answer (a
    timeout, the ledger away) leaves the mark: whoever acts on the row next sends the same charge
    again first (`resolve`)."""
    period = row["periods_paid"] + 1
    await d.pool.execute(
        "UPDATE subscriptions SET pending_period = $2, pending_fee_bps = $3, pending_currency_name = $4"
        " WHERE subscription_id = $1",
        row["subscription_id"],
        period,
        fee_bps,
        currency_name,
    )
    outcome = await d.charger.charge(row, period, fee_bps=fee_bps, currency_name=currency_name, deadline=deadline)
    if isinstance(outcome, Refused):
        return await fail(d, row, outcome, now, keep_lease=keep_lease)
    return await settle(d, row, period, outcome, now, keep_lease=keep_lease)


async def resolve(d: Deps, row: asyncpg.Record, now: datetime.datetime, deadline: float | None) -> asyncpg.Record:
    """What an earlier actor left unfinished, finished first (the lease is ours): a charge sent
    without a definite answer is sent again, the same request under the same key (the ledger
    replays it if it landed, or applies it now, once: it was due before anything that follows),
    and recorded; a prorated cancel decided but not made is made. Returns the row as it now is."""
    if row["status"] != "cancelled" and row["pending_period"] is not None:
        if row["pending_period"] != row["periods_paid"] + 1:
            raise RuntimeError(f"subscription {row['subscription_id']}: pending period {row['pending_period']}")
        row = await charge_period(
            d,
            row,
            now,
            fee_bps=row["pending_fee_bps"],
            currency_name=row["pending_currency_name"],
            deadline=deadline,
            keep_lease=True,  # the caller goes on with the row
        )
    if row["status"] != "cancelled" and row["refund_period"] is not None:
        row = await prorated_end(d, row, now, deadline)
    return row


def proration(
    row: asyncpg.Record, charge: asyncpg.Record | None, now: datetime.datetime
) -> tuple[int, int, int] | None:
    """(period, partner part, fee part) of the refund of the paid period's unused time at `now`, in
    whole seconds, each part rounded down (so they add up to the refund exactly); None when there
    is nothing to refund (a trial, a past_due period never paid, a period over)."""
    if row["status"] != "active" or charge is None or charge["period"] != row["periods_paid"]:
        return None
    start, end = charge["period_start"], charge["period_end"]
    whole = int((end - start).total_seconds())
    unused = int((end - now).total_seconds())
    if whole <= 0 or unused <= 0:
        return None
    unused = min(unused, whole)
    partner = money.pro_rata(charge["partner_amount_minor"], part=unused, whole=whole)
    fee = money.pro_rata(charge["network_fee_minor"], part=unused, whole=whole)
    return (charge["period"], partner, fee) if partner + fee > 0 else None


async def prorated_end(d: Deps, row: asyncpg.Record, now: datetime.datetime, deadline: float | None) -> asyncpg.Record:
    """Cancel now and refund the paid period's unused time. The refund is decided and stored
    first (and the row made due at once, so the loop finishes it if we crash), then made in the
    ledger under its (subscription, period) key, then the cancel recorded with it."""
    if row["refund_period"] is None:
        decided = proration(row, await d.store.charge(row["subscription_id"], row["periods_paid"]), now)
        if decided is None:
            return await end(d, row, "requested", now)
        period, partner, fee = decided
        row = await d.pool.fetchrow(
            "UPDATE subscriptions SET refund_period = $2, refund_partner_minor = $3, refund_fee_minor = $4,"
            " refund_decided_at = $5, next_attempt_at = $5"
            f" WHERE subscription_id = $1 AND refund_period IS NULL RETURNING {COLUMNS}",
            row["subscription_id"],
            period,
            partner,
            fee,
            now,
        ) or await d.store.find(row["subscription_id"])
    try:
        transaction_id = await d.charger.refund(row, deadline=deadline)
    except errors.Conflict:
        # Refused, so nothing moved: the decision is forgotten and the subscription stays as it was.
        await d.pool.execute(
            "UPDATE subscriptions SET refund_period = NULL, refund_partner_minor = NULL, refund_fee_minor = NULL,"
            " refund_decided_at = NULL, next_attempt_at = current_period_end WHERE subscription_id = $1",
            row["subscription_id"],
        )
        raise
    return await end(d, row, "requested", row["refund_decided_at"], refund_transaction_id=transaction_id)


async def release(d: Deps, subscription_id: str, *, defer_to: datetime.datetime | None = None) -> None:
    await d.pool.execute(
        "UPDATE subscriptions SET processing_until = NULL, next_attempt_at = coalesce($2, next_attempt_at)"
        " WHERE subscription_id = $1",
        subscription_id,
        defer_to,
    )


async def charge_first(
    d: Deps, row: asyncpg.Record, *, fee_bps: int | None, currency_name: str, deadline: float | None
) -> asyncpg.Record | Refused:
    """A create's first period (the row is `creating`, its lease ours): paid, or refused and gone."""
    if fee_bps is None:
        tenant = await d.charger.tenant(row["tenant_id"], deadline)
        fee_bps, currency_name = tenant.network_fee_bps, tenant.currency_name
    now = await d.clock.now()
    outcome = await d.charger.charge(row, 1, fee_bps=fee_bps, currency_name=currency_name, deadline=deadline)
    if isinstance(outcome, Refused):
        # Deleted only while the lease is still ours (its expiry is the token): if it ran out and
        # another worker has taken the row over, that worker's own answer decides.
        gone = await d.pool.execute(
            "DELETE FROM subscriptions WHERE subscription_id = $1 AND status = 'creating' AND processing_until = $2",
            row["subscription_id"],
            row["processing_until"],
        )
        if gone != "DELETE 1":
            raise in_progress()
        return outcome
    return await settle(d, row, 1, outcome, now)


@dataclasses.dataclass
class Round:
    renewed: int = 0
    past_due: int = 0
    cancelled: int = 0
    deferred: int = 0
    busy: bool = False
    # Each tenant looked up once a round (its fee and currency name, or why it is away).
    tenants: dict[str, asyncio.Task[Any]] = dataclasses.field(default_factory=dict)

    def tenant(self, d: Deps, tenant_id: str) -> asyncio.Task[Any]:
        if tenant_id not in self.tenants:
            self.tenants[tenant_id] = asyncio.ensure_future(d.charger.tenant(tenant_id, None))
        return self.tenants[tenant_id]


async def _claim(d: Deps, now: datetime.datetime) -> list[asyncpg.Record]:
    """The leases of up to `batch` subscriptions due by `now` (and of creates a crash left), free ones
    only, skipping rows another replica is claiming."""
    return await d.store.lease.claim_batch(
        d.pool,
        where="(next_attempt_at <= $3 AND status IN ('trialing', 'active', 'past_due'))"
        " OR (status = 'creating' AND (next_attempt_at IS NULL OR next_attempt_at <= $3))",
        order_by="next_attempt_at NULLS FIRST",
        limit=d.batch,
        args=(now,),
    )


async def process(d: Deps, row: asyncpg.Record, now: datetime.datetime, tally: Round) -> None:
    """One claimed subscription: ended, charged, refused or deferred; the lease released in all cases."""
    sid = row["subscription_id"]
    try:
        if row["status"] == "creating":
            outcome = await charge_first(d, row, fee_bps=None, currency_name="", deadline=None)
            tally.renewed += 0 if isinstance(outcome, Refused) else 1
            return
        if row["pending_period"] is not None or row["refund_period"] is not None:  # left unfinished
            done = await resolve(d, row, now, None)
            await release(d, sid)  # resolve keeps it for callers that go on; this round does not
            tally.cancelled += done["status"] == "cancelled"
            tally.renewed += done["status"] == "active"
            return
        if row["cancel_at_period_end"] and now >= row["current_period_end"]:
            await end(d, row, "requested", now)
            tally.cancelled += 1
            return
        tenant = await asyncio.shield(tally.tenant(d, row["tenant_id"]))
        done = await charge_period(
            d, row, now, fee_bps=tenant.network_fee_bps, currency_name=tenant.currency_name, deadline=None
        )
        status = done["status"]
        tally.renewed += status == "active"
        tally.past_due += status == "past_due"
        tally.cancelled += status == "cancelled"
    except TenantAway:
        await release(d, sid, defer_to=now + DEFER)
        tally.deferred += 1
    except BaseException:
        await release(d, sid)  # the next round asks again, with the same key
        raise


async def renew_due(d: Deps) -> Round:
    """One round: a batch of due subscriptions claimed and processed side by side (each holds its
    own lease; the batch bounds how many ledger calls are in flight)."""
    tally = Round()
    now = await d.clock.now()
    rows = await _claim(d, now)
    tally.busy = len(rows) >= d.batch

    async def one(row: asyncpg.Record) -> None:
        try:
            await process(d, row, now, tally)
        except Exception as exc:  # one subscription's failure must not hold up the others
            log.warning("subscription %s not renewed yet: %s", row["subscription_id"], type(exc).__name__)

    try:
        await asyncio.gather(*(one(row) for row in rows))
    finally:
        for task in tally.tenants.values():
            task.cancel()
    return tally
