"""A payout on its way: sent to the ACH provider, then moved by what the provider says of it.

`dispatch` asks the provider for the payment order of an approved payout (the "internal bill":
its id is the payout's, its idempotency key `invo-payout-<payout_id>`). The first attempt is
recorded before it is made; a later attempt (after a lost answer, a crash, an outage) first looks
for an order made for the payout (the provider's metadata filter) and only then asks again with
the same key, so a payout is one payment order, even past the provider's 24-hour key memory.

`advance` moves the payout as far as the order's state says, forward only, each move announced:
approved -> processing (the order exists and is on its way), -> completed (the bank has the money;
the hold is posted), -> returned (an ACH return after completion: the revenue is owed again), or
-> failed (the bank refused before settlement: the hold is voided). It is fed by the provider's
webhooks (stored raw, deduped on their id) and by polling what is in flight, whichever comes
first; an older or repeated state changes nothing.
"""

from __future__ import annotations

import json
import logging

import asyncpg

from services.common import errors
from services.payouts import provider as ach
from services.payouts.deps import Deps
from services.payouts.moves import catch_up_ledger, move
from services.payouts.store import LIFECYCLE

log = logging.getLogger("invo.payouts.progress")


def _rank(status: str) -> int:
    """How far along a payment order's state is (unknown: not at all)."""
    if status in ach.IN_FLIGHT:
        return {"processing": 2, "sent": 3}.get(status, 1)
    return {"completed": 4, "returned": 5}.get(status, 5 if status in ach.FAILED else 0)


def path_to(order: ach.Order) -> list[str]:
    """The payout statuses an order's state leads through, in order."""
    if order.status in ach.IN_FLIGHT:
        return ["processing"]
    if order.status == "completed":
        return ["processing", "completed"]
    if order.status == "returned":
        return ["processing", "completed", "returned"]
    if order.status in ach.FAILED:
        return ["failed"]
    return []  # a state we do not know: wait for one we do


async def advance(
    d: Deps, payout_id: str, order: ach.Order, *, source: str, deadline: float | None
) -> asyncpg.Record | None:
    async with d.pool.acquire() as conn, conn.transaction():
        row = await d.store.locked(conn, payout_id)
        if row is None:
            return None
        if order.amount != row["usd_cents"] or (row["provider_order_id"] not in (None, order.order_id)):
            log.error("payment order %s does not match payout %s: left for an operator", order.order_id, payout_id)
            return row
        now = await conn.fetchval("SELECT now()")
        # The provider's state is kept only when it is news: a late webhook (finish_processing after
        # completed) neither moves it back nor postpones the next poll.
        newer = _rank(order.status) >= _rank(row["provider_status"] or "")
        await conn.execute(
            "UPDATE payouts SET provider_order_id = $2,"
            " provider_status = CASE WHEN $3 THEN $4 ELSE provider_status END,"
            " polled_at = CASE WHEN $3 OR $6 THEN $5 ELSE polled_at END WHERE payout_id = $1",
            payout_id,
            order.order_id,
            newer,
            order.status,
            now,
            source == "sweep",
        )
        current = row["status"]
        for target in path_to(order):
            if not LIFECYCLE.can_move(current, target):
                continue
            sets: dict[str, object] = {}
            reason = ""
            if target == "completed":
                sets["completed_at"] = now
            elif target == "returned":
                reason = f"ACH return {order.return_code}: {order.return_reason}".strip(": ")
                sets.update(
                    return_code=order.return_code or None,
                    return_reason=order.return_reason or None,
                    reason=reason,
                    ended_at=now,
                )
            elif target == "failed":
                reason = order.failure_reason or f"the payment order {order.status}"
                sets.update(reason=reason, ended_at=now)
            moved = await move(conn, payout_id, target, source=source, reason=reason, sets=sets)
            if moved is not None:
                current = target
                row = moved
    await catch_up_ledger(d, row, deadline=deadline)
    return row


async def dispatch(d: Deps, payout_id: str, *, source: str, deadline: float | None) -> None:
    """Send an approved payout to the provider, if nobody else is."""
    row = await d.store.lease.claim(d.pool, payout_id, where="status = 'approved'")
    if row is None:
        return
    try:
        order = None
        if row["dispatch_started_at"] is not None:
            order = await d.provider.find(payout_id)  # an earlier attempt may have made it
        else:
            await d.pool.execute("UPDATE payouts SET dispatch_started_at = now() WHERE payout_id = $1", payout_id)
        if order is None:
            number = d.vault.open(row["account_kid"], bytes(row["account_sealed"]), payout_id=payout_id)
            order = await d.provider.create(
                payout_id=payout_id,
                usd_cents=row["usd_cents"],
                holder=row["account_holder_name"],
                routing_number=row["routing_number"],
                account_number=number,
                account_type=row["account_type"],
            )
    except ach.ProviderRefused as exc:
        log.warning("payout %s refused by the ACH provider (%s)", payout_id, exc.code)
        await _refused(d, payout_id, exc.code, deadline=deadline)
        return
    finally:
        await d.store.lease.release(d.pool, payout_id)
    await advance(d, payout_id, order, source=source, deadline=deadline)


async def _refused(d: Deps, payout_id: str, code: str, *, deadline: float | None) -> None:
    reason = f"the ACH provider refused the payment order ({code})"
    async with d.pool.acquire() as conn, conn.transaction():
        moved = await move(
            conn,
            payout_id,
            "failed",
            source="provider",
            reason=reason,
            sets={"reason": reason, "ended_at": await conn.fetchval("SELECT now()")},
        )
    if moved is not None:
        await catch_up_ledger(d, moved, deadline=deadline)


async def poll(d: Deps, row: asyncpg.Record) -> None:
    """Ask the provider about a payout in flight (a webhook may have been lost)."""
    try:
        order = await d.provider.retrieve(row["provider_order_id"])
    finally:
        await d.store.lease.release(d.pool, row["payout_id"])
    await advance(d, row["payout_id"], order, source="sweep", deadline=None)


async def receive(d: Deps, webhook_id: str, body_json: str) -> tuple[bool, bool]:
    """A provider webhook, its signature verified by the gateway: (duplicate, ignored)."""
    try:
        body = json.loads(body_json)
        event, data = str(body["event"]), body["data"]
        order = ach.order_of(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise errors.InvalidRequest("Malformed provider event.", error_code="INVALID_EVENT") from exc
    if not webhook_id or not order.order_id:
        raise errors.InvalidRequest("Malformed provider event.", error_code="INVALID_EVENT")
    row = await d.store.find(order.payout_id) if order.payout_id else None
    if row is None:
        row = await d.store.by_order(d.pool, order.order_id)
    inserted = await d.pool.fetchval(
        "INSERT INTO provider_events (webhook_id, event, order_id, payout_id, body) VALUES ($1, $2, $3, $4, $5::jsonb)"
        " ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id",
        webhook_id[:200],
        event[:100],
        order.order_id[:200],
        row["payout_id"] if row is not None else None,
        body_json,
    )
    if row is None:
        return inserted is None, True  # not a payout of ours: kept, acknowledged
    # A repeated webhook is applied again: `advance` only moves forward, so it changes nothing twice.
    await advance(d, row["payout_id"], order, source="provider", deadline=None)
    await d.pool.execute("UPDATE provider_events SET applied_at = now() WHERE webhook_id = $1", webhook_id[:200])
    return inserted is None, False
