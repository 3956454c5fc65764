"""Refunds: asked by an operator (`request`), made in the processor's own dashboard and learnt from
`charge.refunded` (`from_processor`), or automatic on an early fraud warning (fraud_warnings.py).
Every path ends in the same two steps, so a refund is applied once whichever path sees it first:

1. `_claim` (one payments transaction, the order's row locked): the processor's refund is tied to
   one refund row (ours by the `refund_id` we put in its metadata; a new row for a dashboard
   refund), its currency debit is fixed from the order's running USD total, and the row becomes
   `applying`;
2. `finish`: the ledger's ClawBack under the key `refund:<refund_id>` (a retry replays it), then one
   transaction marks the row `succeeded`, moves a fully refunded order to `refunded` and writes
   `purchase.refunded` to the outbox.

A refund asked of the processor is stored first (`pending`, its amount reserved against what
remains), under the caller's idempotency key, which is also the processor's: the same key is one
processor refund however many times and however concurrently it is sent. A crash anywhere leaves
a `pending` or `applying` row that the recovery loop finishes (`drive_unfinished`).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from typing import Any

import asyncpg

from services.common import errors, events, idempotency, ids, money
from services.common.crypto import request_hash
from services.common.leases import Lease
from services.payments.disputes import Disputes
from services.payments.ledger_client import LedgerClient
from services.payments.orders import OrderStore, event_refs
from services.payments.processor import Processor, ProcessorUnavailable, RefundRefused

log = logging.getLogger("invo.payments.refunds")

REASONS = ("requested_by_customer", "duplicate", "fraudulent")
KEY_LEN_MAX = 255
PROCESSOR_KEY_LEN_MAX = 255  # Stripe's bound on an idempotency key
UNFINISHED_BATCH = 50
REFUND_COLUMNS = (
    "refund_id, order_id, tenant_id, idempotency_key, request_hash, usd_cents, reason, source, operator_id,"
    " status, processor_refund_id, currency_minor, transaction_id, new_balance, failure_code, failure_message,"
    " created_at, updated_at, applied_at, release_hold_id, dispute_id"
)


class RefundExceedsRemaining(errors.InvalidRequest):
    default_error_code = "REFUND_EXCEEDS_REMAINING"


def failure(refund: asyncpg.Record) -> errors.InvoError:
    """The error a refund the processor refused answers, the first time and on every replay."""
    message = refund["failure_message"] or "The processor refused the refund."
    extra = {"refund_id": refund["refund_id"]}
    if refund["failure_code"] == "ORDER_DISPUTED":
        return errors.Conflict(message, error_code="ORDER_DISPUTED", extra=extra)
    return RefundExceedsRemaining(message, error_code=refund["failure_code"] or "REFUND_REFUSED", extra=extra)


def processor_key(order_id: str, key: str) -> str:
    """The processor's idempotency key of a refund: the caller's, scoped by the order (a long one
    by its digest, to fit the processor's bound)."""
    whole = f"invo-refund-{order_id}-{key}"
    if len(whole) <= PROCESSOR_KEY_LEN_MAX:
        return whole
    return f"invo-refund-{order_id}-sha256-{hashlib.sha256(key.encode()).hexdigest()}"


def refunded_event(order: asyncpg.Record, refund: asyncpg.Record) -> dict[str, Any]:
    """purchase.refunded: every field of the seed's example. `usd_refunded` and `currency_debited`
    are this refund's; `usd_refunded_total` what the order has had back so far."""
    return {
        **event_refs(order),
        "usd_refunded": money.format_usd(refund["usd_cents"]),
        "usd_original": money.format_usd(order["usd_cents"]),
        "fully_refunded": order["usd_refunded"] >= order["usd_cents"],
        "currency_debited": money.format_units(refund["currency_minor"] or 0),
        "new_balance": money.format_units(refund["new_balance"] or 0),
        "currency_name": order["currency_name"],
        "order_status": order["status"],
        "refund_id": refund["refund_id"],
        "refund_transaction_id": refund["transaction_id"],
        "usd_refunded_total": money.format_usd(order["usd_refunded"]),
        "reason": refund["reason"],
        "source": refund["source"],
    }


class Refunds:
    def __init__(
        self, store: OrderStore, ledger: LedgerClient, processor: Processor, disputes: Disputes, *, lease_s: float
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.processor = processor
        self.pool = store.pool
        self.lease = Lease(table="refunds", key_column="refund_id", duration_s=lease_s, columns=REFUND_COLUMNS)
        self.disputes = disputes

    async def get(self, conn: asyncpg.Connection | asyncpg.Pool, refund_id: str) -> asyncpg.Record:
        row = await conn.fetchrow(f"SELECT {REFUND_COLUMNS} FROM refunds WHERE refund_id = $1", refund_id)
        if row is None:
            raise errors.NotFound("No such refund.", error_code="REFUND_NOT_FOUND")
        return row

    async def of_order(self, order_id: str, db: asyncpg.Connection | None = None) -> list[asyncpg.Record]:
        return list(
            await (db or self.pool).fetch(
                f"SELECT {REFUND_COLUMNS} FROM refunds WHERE order_id = $1 ORDER BY created_at, refund_id", order_id
            )
        )

    # -- asked of the processor -----------------------------------------------------------

    async def request(
        self,
        order_id: str,
        *,
        usd_cents: int | None,
        reason: str,
        key: str,
        operator_id: str,
        deadline: float | None,
    ) -> tuple[asyncpg.Record, bool]:
        """An operator's refund: (the refund row, duplicate). A replay with the key answers the
        first refund (driving it on if it is unfinished); another request with it is refused."""
        if reason not in REASONS:
            raise errors.InvalidRequest(
                f"reason must be one of {', '.join(REASONS)}.",
                error_code="INVALID_PARAMETER",
                extra={"param": "reason"},
            )
        if not key or len(key) > KEY_LEN_MAX:
            raise errors.InvalidRequest(
                f"idempotency_key must be 1 to {KEY_LEN_MAX} characters.",
                error_code="INVALID_PARAMETER",
                extra={"param": "idempotency_key"},
            )
        digest = request_hash({"usd_cents": usd_cents, "reason": reason})
        refund, duplicate = await self.reserve(
            order_id,
            usd_cents=usd_cents,
            reason=reason,
            key=key,
            digest=digest,
            source="admin",
            operator_id=operator_id,
        )
        if refund["status"] == "failed":
            raise failure(refund)
        if refund["status"] != "succeeded":
            refund = await self.drive(refund, deadline=deadline)
        return refund, duplicate

    async def reserve(
        self,
        order_id: str,
        *,
        usd_cents: int | None,
        reason: str,
        key: str,
        digest: bytes,
        source: str,
        operator_id: str = "",
        conn: asyncpg.Connection | None = None,
    ) -> tuple[asyncpg.Record, bool]:
        """Store a pending refund under the order's lock, its amount checked against what remains
        (applied and in-flight refunds both count). Inside `conn`'s transaction when given."""
        if conn is None:
            async with self.pool.acquire() as own, own.transaction():
                return await self.reserve(
                    order_id,
                    usd_cents=usd_cents,
                    reason=reason,
                    key=key,
                    digest=digest,
                    source=source,
                    operator_id=operator_id,
                    conn=own,
                )
        order = await self.store.locked(conn, order_id)
        existing = await conn.fetchrow(
            f"SELECT {REFUND_COLUMNS} FROM refunds WHERE order_id = $1 AND idempotency_key = $2", order_id, key
        )
        if existing is not None:
            if bytes(existing["request_hash"]) != digest:
                raise idempotency.refuse(key)
            return existing, True
        if order["voided_at"] is not None:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        if order["status"] != "completed":
            raise errors.Conflict(
                f"Only a completed order can be refunded; this one is {order['status']}.",
                error_code="ORDER_NOT_REFUNDABLE",
                extra={"order_status": order["status"]},
            )
        open_dispute = await conn.fetchval(
            "SELECT dispute_id FROM disputes WHERE order_id = $1 AND phase <> 'closed' LIMIT 1", order_id
        )
        if open_dispute is not None:
            raise errors.Conflict(
                "The order's charge is disputed; the bank decides where its money goes.",
                error_code="ORDER_DISPUTED",
                extra={"dispute_id": open_dispute},
            )
        reserved = await conn.fetchval(
            "SELECT coalesce(sum(usd_cents), 0) FROM refunds WHERE order_id = $1 AND status <> 'failed'", order_id
        )
        remaining = order["usd_cents"] - max(int(reserved), order["usd_refunded"])
        amount = remaining if usd_cents is None else usd_cents
        if remaining <= 0 or amount > remaining or amount <= 0:
            raise RefundExceedsRemaining(
                f"At most {money.format_usd(max(0, remaining))} of this order remains refundable.",
                extra={"param": "usd_amount", "usd_refundable": money.format_usd(max(0, remaining))},
            )
        row = await conn.fetchrow(
            f"INSERT INTO refunds (refund_id, order_id, tenant_id, idempotency_key, request_hash, usd_cents, reason,"
            f" source, operator_id, status, processing_until)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', now() + make_interval(secs => $10))"
            f" RETURNING {REFUND_COLUMNS}",
            ids.new_id("rf"),
            order_id,
            order["tenant_id"],
            key,
            digest,
            amount,
            reason,
            source,
            operator_id or None,
            self.lease.duration_s,
        )
        return row, False

    async def drive(self, refund: asyncpg.Record, *, deadline: float | None) -> asyncpg.Record:
        """Take a stored refund as far as it goes: ask the processor (pending), then apply it."""
        if refund["status"] == "pending":
            order = await self.store.get(refund["order_id"])
            try:
                made = await self.processor.refund(
                    payment_intent_id=order["payment_intent_id"],
                    usd_cents=refund["usd_cents"],
                    reason=refund["reason"],
                    idempotency_key=processor_key(refund["order_id"], refund["idempotency_key"]),
                    metadata={"order_id": refund["order_id"], "refund_id": refund["refund_id"]},
                )
            except RefundRefused as exc:
                return await self._refused(refund, exc)
            except ProcessorUnavailable:
                # Free at once for a retry or the recovery loop (the breaker paces them).
                await self.lease.release(self.pool, refund["refund_id"])
                raise
            if made.get("status") in ("failed", "canceled"):
                return await self._refused(refund, RefundRefused("refund_failed", "The processor could not refund."))
            if made.get("status") != "succeeded":
                await self.pool.execute(
                    "UPDATE refunds SET processor_refund_id = $2, updated_at = now() WHERE refund_id = $1"
                    " AND processor_refund_id IS NULL",
                    refund["refund_id"],
                    made.get("id"),
                )
                return await self.get(self.pool, refund["refund_id"])  # the recovery loop asks again
            refund = await self._claim(refund["order_id"], made, source=refund["source"])
        if refund["status"] == "applying":
            refund = await self.finish(refund["refund_id"], deadline=deadline)
        return refund

    async def _refused(self, refund: asyncpg.Record, exc: RefundRefused) -> asyncpg.Record:
        code = "REFUND_EXCEEDS_REMAINING" if exc.code in ("charge_already_refunded", "") else "REFUND_REFUSED"
        if exc.code == "charge_disputed":
            code = "ORDER_DISPUTED"
        row = await self.pool.fetchrow(
            f"UPDATE refunds SET status = 'failed', failure_code = $2, failure_message = $3, processing_until = NULL,"
            f" updated_at = now() WHERE refund_id = $1 AND status = 'pending' RETURNING {REFUND_COLUMNS}",
            refund["refund_id"],
            code,
            exc.message[:500],
        )
        row = row or await self.get(self.pool, refund["refund_id"])
        if row["status"] == "failed":
            raise failure(row)
        return row

    # -- learnt from the processor --------------------------------------------------------

    async def from_processor(self, order: asyncpg.Record, *, deadline: float | None) -> int:
        """Apply every refund the processor has made of this order's payment that we have not:
        the charge.refunded event says something changed; the processor's list of refunds says
        what. Returns how many were applied now."""
        applied = 0
        for made in await self.processor.refunds_of(order["payment_intent_id"]):
            if made.get("status") != "succeeded" or not isinstance(made.get("id"), str):
                continue
            refund = await self._claim(order["order_id"], made, source="processor")
            if refund["status"] == "applying":
                await self.finish(refund["refund_id"], deadline=deadline)
                applied += 1
        return applied

    async def _claim(self, order_id: str, made: dict[str, Any], *, source: str) -> asyncpg.Record:
        """Tie the processor's refund `made` to one refund row and fix its currency debit."""
        async with self.pool.acquire() as conn, conn.transaction():
            order = await self.store.locked(conn, order_id)
            row = await conn.fetchrow(
                f"SELECT {REFUND_COLUMNS} FROM refunds WHERE processor_refund_id = $1 FOR UPDATE", made["id"]
            )
            metadata = made.get("metadata") if isinstance(made.get("metadata"), dict) else {}
            ours = metadata.get("refund_id") if isinstance(metadata, dict) else None
            if row is None and isinstance(ours, str):
                row = await conn.fetchrow(
                    f"SELECT {REFUND_COLUMNS} FROM refunds WHERE refund_id = $1 AND order_id = $2 FOR UPDATE",
                    ours,
                    order_id,
                )
            if row is not None and row["status"] in ("applying", "succeeded"):
                return row
            amount = int(made.get("amount") or 0)
            if amount <= 0 or order["usd_refunded"] + amount > order["usd_cents"]:
                raise errors.Internal(f"the processor's refund {made['id']} does not fit order {order_id}")
            if row is None:  # made in the processor's dashboard: ours from now on
                row = await conn.fetchrow(
                    f"INSERT INTO refunds (refund_id, order_id, tenant_id, idempotency_key, request_hash, usd_cents,"
                    f" reason, source, status) VALUES ($1, $2, $3, $4, '', $5, $6, $7, 'pending')"
                    f" RETURNING {REFUND_COLUMNS}",
                    ids.new_id("rf"),
                    order_id,
                    order["tenant_id"],
                    f"processor:{made['id']}",
                    amount,
                    str(made.get("reason") or "requested_by_customer"),
                    source,
                )
            before, after = order["usd_refunded"], order["usd_refunded"] + amount
            currency = order["currency_amount"]
            debit = money.pro_rata(currency, part=after, whole=order["usd_cents"]) - money.pro_rata(
                currency, part=before, whole=order["usd_cents"]
            )
            # Never more than the order's currency still unreturned (a dispute lost took some).
            debit = min(debit, currency - order["currency_refunded"] - order["currency_clawed"])
            await conn.execute(
                "UPDATE orders SET usd_refunded = $2, currency_refunded = currency_refunded + $3, charge_id ="
                " coalesce(charge_id, $4), updated_at = now() WHERE order_id = $1",
                order_id,
                after,
                debit,
                made.get("charge"),
            )
            # A dispute still open keeps a freeze that this refund's currency is part of: the refund's
            # write voids it, and finish() freezes again what is still disputed.
            frozen = await conn.fetchrow(
                "SELECT dispute_id, hold_id FROM disputes WHERE order_id = $1 AND phase = 'open'"
                " AND hold_id IS NOT NULL LIMIT 1 FOR UPDATE",
                order_id,
            )
            if frozen is not None:
                await conn.execute(
                    "UPDATE disputes SET hold_id = NULL, frozen_minor = 0 WHERE dispute_id = $1", frozen["dispute_id"]
                )
            claimed: asyncpg.Record = await conn.fetchrow(
                f"UPDATE refunds SET status = 'applying', processor_refund_id = $2, usd_cents = $3,"
                f" currency_minor = $4, processing_until = NULL, updated_at = now(), release_hold_id = $5,"
                f" dispute_id = $6 WHERE refund_id = $1 RETURNING {REFUND_COLUMNS}",
                row["refund_id"],
                made["id"],
                amount,
                debit,
                frozen["hold_id"] if frozen is not None else None,
                frozen["dispute_id"] if frozen is not None else None,
            )
            return claimed

    async def finish(self, refund_id: str, *, deadline: float | None) -> asyncpg.Record:
        """The ledger's debit of an `applying` refund, then the refund, the order and the event."""
        refund = await self.get(self.pool, refund_id)
        if refund["status"] != "applying":
            return refund
        order = await self.store.get(refund["order_id"])
        transaction_id, balance = "", None
        release = refund["release_hold_id"] or ""
        if refund["currency_minor"]:
            debit = await self.ledger.claw_back(
                order,
                refund["currency_minor"],
                key=f"refund:{refund_id}",
                reason="refund",
                release_hold_id=release,
                deadline=deadline,
            )
            transaction_id, balance = debit.transaction_id, debit.balance_minor
        elif release:
            await self.ledger.release(order["tenant_id"], release, key=f"refund:{refund_id}:release", deadline=deadline)
        if refund["dispute_id"]:
            await self.disputes.refreeze(refund["dispute_id"], key=f"refund:{refund_id}", deadline=deadline)
        if balance is None:
            balance = await self.ledger.balance(order, deadline=deadline)
        async with self.pool.acquire() as conn, conn.transaction():
            order = await self.store.locked(conn, refund["order_id"])
            done = await conn.fetchrow(
                f"UPDATE refunds SET status = 'succeeded', transaction_id = $2, new_balance = $3, applied_at = $4,"
                f" updated_at = now() WHERE refund_id = $1 AND status = 'applying' RETURNING {REFUND_COLUMNS}",
                refund_id,
                transaction_id or None,
                balance,
                datetime.datetime.now(datetime.UTC),
            )
            if done is None:
                return await self.get(conn, refund_id)  # finished by someone else meanwhile
            if order["usd_refunded"] >= order["usd_cents"] and order["status"] == "completed":
                moved = await self.store.move(
                    conn, order["order_id"], "refunded", source=done["source"], reason="fully refunded"
                )
                order = moved or order
            await events.emit(
                conn, tenant_id=order["tenant_id"], event_type="purchase.refunded", data=refunded_event(order, done)
            )
            return done

    async def drive_unfinished(self) -> int:
        """The recovery loop's part: refunds left pending (the processor did not answer, or a
        crash) or applying (a crash before the ledger or the event), one at a time."""
        seen: set[str] = set()
        while len(seen) < UNFINISHED_BATCH:
            rows = await self.lease.claim_batch(
                self.pool,
                where="status IN ('pending', 'applying') AND updated_at < now() - interval '2 seconds'",
                order_by="updated_at",
                limit=1,
            )
            if not rows or rows[0]["refund_id"] in seen:
                break
            seen.add(rows[0]["refund_id"])
            try:
                await self.drive(rows[0], deadline=None)
            except errors.InvalidRequest:
                continue  # refused by the processor: recorded as failed
            except Exception as exc:
                code = exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__
                log.warning("recovery of refund %s: %s", rows[0]["refund_id"], code)
                break
        return len(seen)
