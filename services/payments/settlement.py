"""Settling an order from what the processor says of its PaymentIntent, and the ledger client.

Crediting happens exactly once whichever arrives first: the processor's answer to our own call,
confirm-payment, or the processor's webhook. Every path ends in `complete()`:

1. the ledger's CreditPurchase with the idempotency key `order:<order_id>`, so a second caller gets
   the first credit back instead of a second one; its timeout is what is left of the caller's
   deadline (at most INVO_RPC_TIMEOUT_S), so we never keep working for a caller who has gone;
2. one payments statement that moves the order to `completed` only if it is still unsettled,
   records the transition and writes `purchase.completed` to the outbox (from a webhook, in the
   transaction that also marks the event handled).

A crash between the two leaves an unsettled order whose lease runs out; the recovery loop looks up
the order's stored PaymentIntent at the processor and completes it.

A succeeded PaymentIntent is credited only if its amount and currency are the order's. Otherwise
the order is held for an operator (`review_reason`), stays unsettled and is never credited
automatically: crediting the order's amount for a different charge would mint currency nobody paid
for, and failing it would tell the partner nothing was charged when something was.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
from typing import Any

import asyncpg

from services.common import events, money
from services.common.transitions import Event
from services.payments import inbox
from services.payments.ledger_client import LedgerClient
from services.payments.orders import UNSETTLED, OrderStore
from services.payments.processor import Outcome

log = logging.getLogger("invo.payments.settlement")

CURRENCY = "usd"


def mismatch(row: asyncpg.Record, outcome: Outcome) -> str:
    """Why a succeeded PaymentIntent does not pay for this order ("" when it does)."""
    if outcome.currency.lower() != CURRENCY:
        return f"the PaymentIntent is in {outcome.currency or 'no currency'!r}, the order in {CURRENCY!r}"
    if outcome.amount != row["usd_cents"]:
        return f"the PaymentIntent is for {outcome.amount} cents, the order for {row['usd_cents']}"
    if outcome.amount_received is not None and outcome.amount_received != row["usd_cents"]:
        return f"the processor received {outcome.amount_received} cents, the order is for {row['usd_cents']}"
    return ""


def completed_event(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "transaction_id": row["transaction_id"],
        "order_id": row["order_id"],
        "player_email": row["player_email"],
        "identity_id": row["identity_id"],
        "usd_amount": money.format_usd(row["usd_cents"]),
        "currency_amount": money.format_units(row["currency_amount"]),
        "currency_name": row["currency_name"],
        "metadata": json.loads(row["metadata"]),
        # A wallet in debt (a clawback) is repaid first: what went to the debt, and what the player got.
        "debt_repaid": money.format_units(row["debt_repaid"]),
        "currency_credited": money.format_units(row["currency_amount"] - row["debt_repaid"]),
    }


def debt_repaid(amount_minor: int, balance_after_minor: int | None) -> int:
    """Of a credit of `amount_minor` that left the wallet at `balance_after_minor`, what repaid a
    debt (the part that brought a negative wallet back towards zero)."""
    if balance_after_minor is None:
        return 0
    before = balance_after_minor - amount_minor
    return min(amount_minor, max(0, -before))


def failed_event(row: asyncpg.Record) -> dict[str, Any]:
    # The seed's failure codes are "card_declined" and "payment_canceled"; the processor's own
    # reason (a failed 3-D Secure, say) is in failure_message and in the order's history.
    code = "payment_canceled" if row["status"] == "cancelled" else "card_declined"
    return {
        "payment_intent_id": row["payment_intent_id"],
        "order_id": row["order_id"],
        "player_email": row["player_email"],
        "usd_amount": money.format_usd(row["usd_cents"]),
        "failure_code": code,
        "failure_message": row["failure_message"],
    }


class Settlement:
    def __init__(self, store: OrderStore, ledger: LedgerClient) -> None:
        self.store = store
        self.ledger = ledger
        self.pool = store.pool
        # Orders being completed by a caller in this process: order_id -> the row it ends with
        # (None if it failed). See complete().
        self._completing: dict[str, asyncio.Future[asyncpg.Record | None]] = {}

    async def apply(
        self, row: asyncpg.Record, outcome: Outcome, *, source: str, deadline: float | None
    ) -> tuple[asyncpg.Record, bool]:
        """Settle the order from the processor's word; returns (order now, already_processed)."""
        if outcome.status == "succeeded":
            return await self.complete(row, outcome, source=source, deadline=deadline)
        if outcome.status == "requires_action":
            return await self.requires_action(row, outcome, source=source), False
        if outcome.status in ("declined", "requires_payment_method"):
            return await self.fail(row, outcome, to_status="failed", source=source), False
        if outcome.status == "canceled":
            return await self.fail(row, outcome, to_status="cancelled", source=source), False
        # processing / requires_confirmation: the processor has not decided; the order stays in flight.
        return await self.store.get(row["order_id"]), False

    async def complete(
        self,
        row: asyncpg.Record,
        outcome: Outcome,
        *,
        source: str,
        deadline: float | None,
        event_id: str | None = None,
    ) -> tuple[asyncpg.Record, bool]:
        """Credit the player once and mark the order completed (only when the processor reports this
        order's PaymentIntent succeeded). Returns (order, already_processed).

        A second caller in this process for an order being completed right now (the processor's
        webhook racing our own call's answer: a third of purchases on the bench) waits for the
        first and answers with its result, instead of asking the ledger for the same credit again
        and trying the same move. If the first fails, the second goes on as if it were alone."""
        if row["status"] not in (*UNSETTLED, "failed") or row["review_reason"]:
            if event_id is not None:
                await inbox.mark_handled(self.pool, event_id, "order settled already")
            return row, True
        order_id = row["order_id"]
        first = self._completing.get(order_id)
        if first is not None:
            done = await asyncio.shield(first)
            if done is not None:
                if event_id is not None:
                    note = f"held for review: {done['review_reason']}" if done["review_reason"] else "settled already"
                    await inbox.mark_handled(self.pool, event_id, f"order {note}")
                return done, True
        mine: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
        self._completing[order_id] = mine
        try:
            done, already = await self._complete(row, outcome, source=source, deadline=deadline, event_id=event_id)
        except BaseException:
            mine.set_result(None)
            raise
        else:
            mine.set_result(done)
        finally:
            if self._completing.get(order_id) is mine:
                del self._completing[order_id]
        return done, already

    async def _complete(
        self, row: asyncpg.Record, outcome: Outcome, *, source: str, deadline: float | None, event_id: str | None
    ) -> tuple[asyncpg.Record, bool]:
        payment_intent_id = outcome.payment_intent_id or row["payment_intent_id"] or ""
        why = mismatch(row, outcome)
        if why:
            return await self._hold_for_review(row, why, payment_intent_id, event_id=event_id), False
        credit = await self.ledger.credit_purchase(row, payment_intent_id, deadline=deadline)
        sets = {
            "transaction_id": credit.transaction_id,
            "new_balance": credit.balance_minor,
            "debt_repaid": debt_repaid(row["currency_amount"], credit.balance_minor),
            "payment_intent_id": payment_intent_id or None,
            "charge_id": outcome.charge_id or None,
            "completed_at": datetime.datetime.now(datetime.UTC),
            "processing_until": None,
        }
        # The event names the order's own fields, which no move changes, and what this one sets.
        event = Event(row["tenant_id"], "purchase.completed", completed_event({**dict(row), **sets}))
        move = functools.partial(
            self.store.move,
            order_id=row["order_id"],
            to_status="completed",
            source=source,
            reason="charge succeeded; currency credited",
            sets=sets,
            event=event,
        )
        if event_id is None:
            # The move, its audit row and purchase.completed are one statement: its own transaction.
            done = await move(self.pool)
            if done is not None:
                return done, False
            async with self.pool.acquire() as conn:
                return await self.store.current(conn, row["order_id"]), True
        async with self.pool.acquire() as conn, conn.transaction():
            if not await inbox.mark_handled(conn, event_id, "applied"):
                return await self.store.current(conn, row["order_id"]), True
            done = await move(conn)
            if done is None:
                return await self.store.current(conn, row["order_id"]), True
        return done, False

    async def hold(self, row: asyncpg.Record, why: str) -> asyncpg.Record:
        """Hold an unsettled order for an operator: never credited or failed automatically."""
        return await self._hold_for_review(row, why, row["payment_intent_id"] or "", event_id=None)

    async def _hold_for_review(
        self, row: asyncpg.Record, why: str, payment_intent_id: str, *, event_id: str | None
    ) -> asyncpg.Record:
        log.error(
            "order %s held for review, not credited: %s (payment intent %s)",
            row["order_id"],
            why,
            payment_intent_id,
            extra={"fields": {"order_id": row["order_id"], "payment_intent_id": payment_intent_id}},
        )
        async with self.pool.acquire() as conn, conn.transaction():
            if event_id is not None:
                await inbox.mark_handled(conn, event_id, f"held for review: {why}")
            held = await self.store.hold_for_review(conn, row["order_id"], why)
            return held if held is not None else await self.store.current(conn, row["order_id"])

    async def fail(
        self,
        row: asyncpg.Record,
        outcome: Outcome,
        *,
        to_status: str,
        source: str,
        event_id: str | None = None,
    ) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            if event_id is not None and not await inbox.mark_handled(conn, event_id, "applied"):
                return await self.store.current(conn, row["order_id"])
            failure_code = outcome.failure_code or ("payment_canceled" if to_status == "cancelled" else "card_declined")
            done = await self.store.move(
                conn,
                row["order_id"],
                to_status,
                source=source,
                reason=outcome.failure_message or failure_code,
                sets={
                    "failure_code": failure_code,
                    "failure_message": outcome.failure_message or "The payment did not go through.",
                    "decline_code": outcome.decline_code or None,
                    "payment_intent_id": outcome.payment_intent_id or row["payment_intent_id"],
                    "processing_until": None,
                },
            )
            if done is None:
                return await self.store.current(conn, row["order_id"])
            await events.emit(conn, tenant_id=done["tenant_id"], event_type="purchase.failed", data=failed_event(done))
            return done

    async def requires_action(self, row: asyncpg.Record, outcome: Outcome, *, source: str) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            done = await self.store.move(
                conn,
                row["order_id"],
                "requires_action",
                source=source,
                reason="3-D Secure challenge required",
                sets={
                    "payment_intent_id": outcome.payment_intent_id,
                    "client_secret": outcome.client_secret,
                    "processing_until": None,
                },
            )
            return done if done is not None else await self.store.current(conn, row["order_id"])
