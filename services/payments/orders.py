"""The order store: the SQL of orders, their lifecycle (the seed's "Order status lifecycle") with its
append-only audit trail, and the lease a worker holds while it talks to the processor about one.

Every status change goes through `move()`, which writes the audit row in the same transaction.
Rows are returned as asyncpg records with the columns of `COLUMNS`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from typing import Any

import asyncpg

from services.common import errors
from services.common.leases import Lease
from services.common.transitions import Event, Lifecycle

ORDER_ID_RE = re.compile(r"^ord_[0-9A-Z]{26}$")
UNSETTLED = ("pending_payment", "requires_action")
# A purchase that was paid for: its answer is "success" whatever happened to it afterwards.
PAID = ("completed", "refunded", "disputed_lost")
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending_payment": frozenset({"requires_action", "completed", "failed", "cancelled"}),
    "requires_action": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset({"refunded", "disputed_lost"}),
    # After a failed 3-D Secure or a decline the PaymentIntent is requires_payment_method, and the
    # cardholder may confirm it again: if the processor then reports it succeeded, it completes.
    "failed": frozenset({"completed"}),
    "cancelled": frozenset(),
    "refunded": frozenset(),
    "disputed_lost": frozenset(),
}

COLUMNS = (
    "order_id, tenant_id, purchase_reference, request_hash, environment, player_email, identity_id, usd_cents,"
    " currency_amount, currency_name, payment_method_id, payment_intent_id, client_secret, status, failure_code,"
    " failure_message, decline_code, transaction_id, new_balance, metadata, processing_until, created_at,"
    " updated_at, completed_at, voided_at, review_reason, processor_customer_id, save_card, charge_id, usd_refunded,"
    " currency_refunded, currency_clawed, debt_repaid"
)
LIFECYCLE = Lifecycle(
    table="orders", key_column="order_id", audit_table="order_transitions", allowed=TRANSITIONS, columns=COLUMNS
)
# Voided orders (refused before the processor made anything of them) do not exist for partners.
_VISIBLE = "voided_at IS NULL"


def event_refs(order: asyncpg.Record, charge_id: str | None = None) -> dict[str, Any]:
    """What every after-sale event names of its order (the seed's examples all start so)."""
    return {
        "order_id": order["order_id"],
        "transaction_id": order["transaction_id"],
        "payment_intent_id": order["payment_intent_id"],
        "charge_id": charge_id or order["charge_id"],
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewOrder:
    order_id: str
    tenant_id: str
    purchase_reference: str
    request_hash: bytes
    environment: str
    player_email: str
    identity_id: str
    usd_cents: int
    currency_amount_minor: int
    currency_name: str
    payment_method_id: str
    metadata_json: str
    # A checkout order: the player's processor Customer, and whether the card is saved to it.
    customer_id: str = ""
    save_card: bool = False


class OrderStore:
    def __init__(self, pool: asyncpg.Pool, *, lease_s: float) -> None:
        self.pool = pool
        self.lease = Lease(table="orders", key_column="order_id", duration_s=lease_s, columns=COLUMNS)

    # -- reads ----------------------------------------------------------------------------

    async def find(self, order_id: str, conn: asyncpg.Connection | None = None) -> asyncpg.Record | None:
        db: Any = conn or self.pool
        return await db.fetchrow(f"SELECT {COLUMNS} FROM orders WHERE order_id = $1 AND {_VISIBLE}", order_id)

    async def of_player(self, tenant_id: str, email: str, limit: int) -> list[asyncpg.Record]:
        """A player's latest orders in a tenant, newest first (orders_player_recent)."""
        return list(
            await self.pool.fetch(
                f"SELECT {COLUMNS} FROM orders WHERE tenant_id = $1 AND player_email = $2 AND {_VISIBLE}"
                " ORDER BY created_at DESC LIMIT $3",
                tenant_id,
                email,
                limit,
            )
        )

    async def get(self, order_id: str) -> asyncpg.Record:
        row = await self.find(order_id)
        if row is None:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        return row

    async def current(self, conn: asyncpg.Connection, order_id: str) -> asyncpg.Record:
        """The row as it is now, voided or not (after a move that did not happen)."""
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM orders WHERE order_id = $1", order_id)
        if row is None:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        return row

    async def by_intent(self, payment_intent_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT {COLUMNS} FROM orders WHERE payment_intent_id = $1 AND {_VISIBLE}", payment_intent_id
        )

    async def locked(self, conn: asyncpg.Connection, order_id: str) -> asyncpg.Record:
        """The row, locked until the transaction ends: refunds, disputes and warnings of one order
        are applied one at a time."""
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM orders WHERE order_id = $1 FOR UPDATE", order_id)
        if row is None:
            raise errors.NotFound("No such order.", error_code="ORDER_NOT_FOUND")
        return row

    async def by_reference(self, conn: asyncpg.Connection, tenant_id: str, reference: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {COLUMNS} FROM orders WHERE tenant_id = $1 AND purchase_reference = $2 AND {_VISIBLE}",
            tenant_id,
            reference,
        )

    async def history(self, order_id: str) -> list[asyncpg.Record]:
        return await LIFECYCLE.history(self.pool, order_id)

    # -- writes ---------------------------------------------------------------------------

    async def insert(self, conn: asyncpg.Connection, new: NewOrder) -> asyncpg.Record | None:
        """A new order in pending_payment, leased to the caller, with its first audit row; None if
        the reference was taken meanwhile (the unique key decides, the loser answers as a replay)."""
        return await LIFECYCLE.insert(
            conn,
            "INSERT INTO orders (order_id, tenant_id, purchase_reference, request_hash, environment,"
            " player_email, identity_id, usd_cents, currency_amount, currency_name, payment_method_id,"
            " status, metadata, processing_until, processor_customer_id, save_card)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending_payment', $12::jsonb,"
            "   now() + make_interval(secs => $13), $14, $15)"
            f" ON CONFLICT (tenant_id, purchase_reference) WHERE {_VISIBLE} DO NOTHING",
            new.order_id,
            new.tenant_id,
            new.purchase_reference,
            new.request_hash,
            new.environment,
            new.player_email,
            new.identity_id,
            new.usd_cents,
            new.currency_amount_minor,
            new.currency_name,
            new.payment_method_id,
            new.metadata_json,
            self.lease.duration_s,
            new.customer_id or None,
            new.save_card,
            source="api",
            reason="order created",
        )

    async def move(
        self,
        conn: asyncpg.Connection | asyncpg.Pool,
        order_id: str,
        to_status: str,
        *,
        source: str,
        reason: str,
        sets: dict[str, Any] | None = None,
        event: Event | None = None,
    ) -> asyncpg.Record | None:
        """Move the order if the lifecycle allows it from where it is now (and write `event` if it
        moved); None if not."""
        return await LIFECYCLE.move(conn, order_id, to_status, source=source, reason=reason, sets=sets, event=event)

    async def void(self, order_id: str, *, source: str, reason: str) -> None:
        """The processor refused the request before any PaymentIntent existed: the order fails
        (its history says why) and disappears for the partner, freeing its purchase_reference."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self.move(
                conn,
                order_id,
                "failed",
                source=source,
                reason=reason,
                sets={
                    "failure_code": "invalid_payment_method",
                    "failure_message": reason,
                    "processing_until": None,
                    "voided_at": datetime.datetime.now(datetime.UTC),
                },
            )

    async def set_intent(self, order_id: str, payment_intent_id: str) -> str:
        """Store the order's PaymentIntent before it is confirmed; returns the one the order holds
        (an id stored earlier is never replaced: the order has one intent, ever)."""
        if not payment_intent_id:
            raise errors.Internal("the processor created a PaymentIntent without an id")
        stored = await self.pool.fetchval(
            "UPDATE orders SET payment_intent_id = $2, updated_at = now()"
            " WHERE order_id = $1 AND payment_intent_id IS NULL RETURNING payment_intent_id",
            order_id,
            payment_intent_id,
        )
        if stored is None:
            stored = await self.pool.fetchval("SELECT payment_intent_id FROM orders WHERE order_id = $1", order_id)
        if not stored:
            raise errors.Internal("the order's PaymentIntent could not be stored")
        return str(stored)

    async def hold_for_review(self, conn: asyncpg.Connection, order_id: str, reason: str) -> asyncpg.Record | None:
        """Keep an unsettled order as it is, never to be credited automatically, for an operator."""
        return await conn.fetchrow(
            f"UPDATE orders SET review_reason = $2, processing_until = NULL, updated_at = now()"
            f" WHERE order_id = $1 AND status IN ('pending_payment', 'requires_action', 'failed')"
            f" AND review_reason IS NULL RETURNING {COLUMNS}",
            order_id,
            reason[:500],
        )

    # -- leases ---------------------------------------------------------------------------

    async def claim_pending(self, order_id: str) -> asyncpg.Record | None:
        """Take over a pending order whose worker died or whose processor call failed."""
        return await self.lease.claim(self.pool, order_id, where="status = 'pending_payment' AND review_reason IS NULL")

    async def release(self, order_id: str) -> None:
        await self.lease.release(self.pool, order_id)

    async def claim_stale(self, limit: int) -> list[asyncpg.Record]:
        """Pending orders nobody is working on (a crash, a lost processor answer), oldest first."""
        return await self.lease.claim_batch(
            self.pool,
            where="status = 'pending_payment' AND review_reason IS NULL AND voided_at IS NULL",
            order_by="created_at",
            limit=limit,
        )

    async def claim_abandoned(self, *, older_than_s: float, limit: int) -> list[asyncpg.Record]:
        """Orders whose 3-D Secure challenge has waited longer than `older_than_s` (updated_at is
        when they entered requires_action: nothing else touches a row in that status)."""
        if not (math.isfinite(older_than_s) and older_than_s >= 0):
            raise ValueError("older_than_s must be a finite, non-negative number of seconds")
        return await self.lease.claim_batch(
            self.pool,
            where=(
                "status = 'requires_action' AND review_reason IS NULL AND payment_intent_id IS NOT NULL"
                f" AND updated_at < now() - make_interval(secs => {float(older_than_s)!r})"
            ),
            order_by="updated_at",
            limit=limit,
        )
