"""What a partner asks: create (the first period charged at once unless trialing; the idempotency
key makes a retry or a concurrent copy the same subscription), cancel (at the period's end, or at
once), resume (a cancel at the period's end taken back before the period ends).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time

import asyncpg
from invo.v1 import subscriptions_pb2

from services.common import errors, events, idempotency, ids
from services.subscriptions import calendar, messages, renewals
from services.subscriptions.charges import Refused
from services.subscriptions.deps import Deps
from services.subscriptions.store import COLUMNS, in_progress

WAIT_STEP_S = 0.05
WAIT_MAX_S = 10.0


def _give_up(deadline: float | None) -> float:
    """When a wait for another holder's lease ends: WAIT_MAX_S from now, or the caller's deadline."""
    return time.monotonic() + min(WAIT_MAX_S, (deadline - time.monotonic()) if deadline else WAIT_MAX_S)


def _refused(r: Refused) -> errors.PaymentRequired:
    return errors.PaymentRequired(
        f"The first period could not be paid: {r.message} Nothing was created.", error_code=r.error_code
    )


def _check(req: subscriptions_pb2.CreateSubscriptionRequest) -> None:
    if req.interval not in calendar.INTERVALS:
        raise errors.InvalidRequest(
            "interval must be day, week or month.", error_code="INVALID_PARAMETER", extra={"param": "interval"}
        )
    if not 1 <= req.interval_count <= calendar.COUNT_MAX[req.interval]:
        raise errors.InvalidRequest(
            f"interval_count must be from 1 to {calendar.COUNT_MAX[req.interval]} for {req.interval}.",
            error_code="INVALID_PARAMETER",
            extra={"param": "interval_count"},
        )
    if req.price_minor <= 0 or not 0 <= req.trial_days <= 730:
        raise errors.InvalidRequest("price and trial_days out of range.", error_code="INVALID_PARAMETER")
    idempotency.valid_key(req.idempotency_key)


def _digest(req: subscriptions_pb2.CreateSubscriptionRequest) -> bytes:
    return idempotency.fingerprint(
        {
            "player_email": req.player_email,
            "plan_id": req.plan_id,
            "plan_name": req.plan_name,
            "price_minor": req.price_minor,
            "interval": req.interval,
            "interval_count": req.interval_count,
            "trial_days": req.trial_days,
            "metadata": json.loads(req.metadata_json or "{}"),
        }
    )


async def _insert(
    d: Deps, req: subscriptions_pb2.CreateSubscriptionRequest, digest: bytes, now: datetime.datetime
) -> asyncpg.Record | None:
    """The new row (None: the key is taken). A trial starts at once (its event with it); a paid
    subscription starts `creating` with its lease ours, until its first period is paid."""
    trial = req.trial_days > 0
    anchor = now + datetime.timedelta(days=req.trial_days)
    first_end = anchor if trial else calendar.period_end(anchor, req.interval, req.interval_count, 1)
    async with d.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO subscriptions (subscription_id, tenant_id, environment, player_email, plan_id, plan_name,"
            " price_minor, interval, interval_count, trial_days, metadata, idempotency_key, request_hash, status,"
            " anchor, current_period_start, current_period_end, trial_end, next_attempt_at, created_at, updated_at,"
            " processing_until)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14, $15, $16, $17, $18, $19,"
            " $16, $16, CASE WHEN $20 THEN NULL ELSE now() + make_interval(secs => $21) END)"
            f" ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING {COLUMNS}",
            ids.new_id("sub"),
            req.tenant_id,
            req.environment,
            req.player_email,
            req.plan_id,
            req.plan_name,
            req.price_minor,
            req.interval,
            req.interval_count,
            req.trial_days,
            req.metadata_json or "{}",
            req.idempotency_key,
            digest,
            "trialing" if trial else "creating",
            anchor,
            now,
            first_end,
            anchor if trial else None,
            anchor if trial else first_end,
            trial,
            d.lease_s,
        )
        if row is not None and trial:
            await events_created(conn, row)
    return row


async def events_created(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    await events.emit(
        conn, tenant_id=row["tenant_id"], event_type=messages.CREATED, data=messages.event_data(row, period=0)
    )


async def create(
    d: Deps, req: subscriptions_pb2.CreateSubscriptionRequest, *, deadline: float | None
) -> tuple[asyncpg.Record, bool]:
    """(subscription, duplicate). 402 when the first period cannot be paid (nothing is kept)."""
    _check(req)
    digest = _digest(req)
    give_up = _give_up(deadline)
    while True:
        existing = await d.pool.fetchrow(
            f"SELECT {COLUMNS} FROM subscriptions WHERE tenant_id = $1 AND idempotency_key = $2",
            req.tenant_id,
            req.idempotency_key,
        )
        if existing is not None:
            idempotency.check_replay(existing["request_hash"], digest, key=req.idempotency_key)
            if existing["status"] != "creating":
                return existing, True
            # Another request (or a crash) left it creating: finish it if its lease is free, else wait.
            mine = await d.store.lease.claim(d.pool, existing["subscription_id"], where="status = 'creating'")
            if mine is None:
                if time.monotonic() > give_up:
                    raise in_progress()
                await asyncio.sleep(WAIT_STEP_S)
                continue
            duplicate = True
            row = mine
        else:
            now = await d.clock.now()
            inserted = await _insert(d, req, digest, now)
            if inserted is None:
                continue  # a concurrent copy took the key first: read it
            if inserted["status"] != "creating":
                return inserted, False
            duplicate, row = False, inserted
        try:
            outcome = await renewals.charge_first(
                d, row, fee_bps=req.network_fee_bps, currency_name=req.currency_name, deadline=deadline
            )
        except BaseException:
            await renewals.release(d, row["subscription_id"])
            raise
        if isinstance(outcome, Refused):
            raise _refused(outcome)
        return outcome, duplicate


async def _locked(d: Deps, tenant_id: str, subscription_id: str, deadline: float | None) -> asyncpg.Record:
    """The subscription with its lease ours, waiting for a renewal in flight to finish."""
    row = await d.store.visible(subscription_id, tenant_id)
    give_up = _give_up(deadline)
    while True:
        mine = await d.store.lease.claim(d.pool, row["subscription_id"], where="status <> 'creating'")
        if mine is not None:
            return mine
        if time.monotonic() > give_up:
            raise errors.Conflict(
                "The subscription is being renewed; retry in a moment.", error_code="SUBSCRIPTION_BUSY"
            )
        await asyncio.sleep(WAIT_STEP_S)


async def _at_period_end(
    d: Deps, row: asyncpg.Record, cancel: bool, now: datetime.datetime
) -> tuple[asyncpg.Record, bool]:
    """A cancel at the period's end asked for (or taken back); (row, duplicate: it was so already)."""
    if row["cancel_at_period_end"] == cancel:
        return row, True
    done = await d.pool.fetchrow(
        "UPDATE subscriptions SET cancel_at_period_end = $2, updated_at = $3"
        f" WHERE subscription_id = $1 RETURNING {COLUMNS}",
        row["subscription_id"],
        cancel,
        now,
    )
    return done, False


async def cancel(
    d: Deps, tenant_id: str, subscription_id: str, *, at_once: bool, prorate: bool, deadline: float | None
) -> tuple[asyncpg.Record, bool]:
    """(subscription, duplicate: nothing changed). At the period's end by default: it stays as it is
    until then and is not renewed; at once: cancelled now. A past_due one ends at once either way
    (its unpaid period never started). Unused time is refunded only at once and with `prorate`
    (at the period's end none is left unused)."""
    prorate = prorate and at_once
    row = await _locked(d, tenant_id, subscription_id, deadline)
    try:
        now = await d.clock.now()
        # A charge already on its way, or a prorated cancel decided, is finished first.
        row = await renewals.resolve(d, row, now, deadline)
        if row["status"] == "cancelled":
            return row, True
        if prorate:
            return await renewals.prorated_end(d, row, now, deadline), False
        if at_once or row["status"] == "past_due":
            return await renewals.end(d, row, "requested", now), False
        return await _at_period_end(d, row, True, now)
    finally:
        await renewals.release(d, row["subscription_id"])


async def resume(
    d: Deps, tenant_id: str, subscription_id: str, *, deadline: float | None
) -> tuple[asyncpg.Record, bool]:
    """Take back a cancel at the period's end, before the period ends."""
    row = await _locked(d, tenant_id, subscription_id, deadline)
    try:
        now = await d.clock.now()
        row = await renewals.resolve(d, row, now, deadline)
        if row["status"] == "cancelled" or (row["cancel_at_period_end"] and now >= row["current_period_end"]):
            raise errors.Conflict(
                "The subscription has ended; create a new one.", error_code="SUBSCRIPTION_NOT_RESUMABLE"
            )
        return await _at_period_end(d, row, False, now)
    finally:
        await renewals.release(d, row["subscription_id"])
