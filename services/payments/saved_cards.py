"""Saved cards: one processor Customer per tenant and player, holding the cards the player chose to
save at checkout (Stripe attaches a card to the Customer when a payment with `setup_future_usage`
succeeds). Only brand, last 4 and expiry ever leave the processor; the card itself stays there.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import asyncpg
import stripe

from services.common import errors
from services.payments.processor import Processor, _plain

SAVED_CARDS_MAX = 10  # listed per player (Stripe's page is up to 100; a selector shows a few)


class CardNotFound(errors.NotFound):
    default_error = "card_not_found"
    default_error_code = "CARD_NOT_FOUND"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Card:
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    customer_id: str  # "" when attached to no Customer (a card just entered)


def _card(pm: dict[str, Any]) -> Card:
    card = pm.get("card") or {}
    return Card(
        id=str(pm.get("id") or ""),
        brand=str(card.get("brand") or "card"),
        last4=str(card.get("last4") or ""),
        exp_month=int(card.get("exp_month") or 0),
        exp_year=int(card.get("exp_year") or 0),
        customer_id=str(pm.get("customer") or ""),
    )


def _invalid_card(exc: Exception) -> errors.InvalidRequest:
    err = errors.InvalidRequest(
        "The card could not be used; enter it again.",
        error_code="INVALID_PAYMENT_METHOD",
        extra={"param": "payment_method_id"},
    )
    err.__cause__ = exc
    return err


class SavedCards:
    def __init__(self, pool: asyncpg.Pool, processor: Processor) -> None:
        self.pool = pool
        self.processor = processor
        self.client = processor.client

    async def customer(self, tenant_id: str, email: str, *, create: bool) -> str:
        """The player's Customer id ("" if none and not `create`). Made once: the processor's
        idempotency key and our primary key both make a race end with one Customer."""
        found = await self.pool.fetchval(
            "SELECT customer_id FROM processor_customers WHERE tenant_id = $1 AND player_email = $2", tenant_id, email
        )
        if found or not create:
            return str(found or "")
        digest = hashlib.sha256(f"{tenant_id}\x00{email}".encode()).hexdigest()[:40]
        cus = await self.processor._guarded(
            self.client.v1.customers.create_async(
                params={"email": email, "metadata": {"tenant_id": tenant_id}},
                options={"idempotency_key": f"invo-customer-{digest}"},
            )
        )
        customer_id = str(_plain(cus)["id"])
        await self.pool.execute(
            "INSERT INTO processor_customers (tenant_id, player_email, customer_id) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            tenant_id,
            email,
            customer_id,
        )
        stored = await self.pool.fetchval(
            "SELECT customer_id FROM processor_customers WHERE tenant_id = $1 AND player_email = $2", tenant_id, email
        )
        return str(stored)

    async def list(self, customer_id: str) -> list[Card]:
        if not customer_id:
            return []
        page = await self.processor._guarded(
            self.client.v1.customers.payment_methods.list_async(
                customer_id, params={"type": "card", "limit": SAVED_CARDS_MAX}
            )
        )
        return [_card(_plain(pm)) for pm in (_plain(page).get("data") or [])][:SAVED_CARDS_MAX]

    async def payment_method(self, pm_id: str) -> Card:
        try:
            pm = await self.processor._guarded(self.client.v1.payment_methods.retrieve_async(pm_id))
        except stripe.InvalidRequestError as exc:
            raise _invalid_card(exc) from exc
        return _card(_plain(pm))

    async def usable(self, pm_id: str, customer_id: str) -> Card:
        """The card, if this player may pay with it: one just entered (no Customer yet) or one
        saved to this player's Customer; never another player's saved card."""
        card = await self.payment_method(pm_id)
        if card.customer_id and card.customer_id != customer_id:
            raise errors.InvalidRequest(
                "The card could not be used; enter it again.",
                error_code="INVALID_PAYMENT_METHOD",
                extra={"param": "payment_method_id"},
            )
        return card

    async def remove(self, card_id: str, customer_id: str) -> None:
        """Detach one of this player's saved cards; another player's, or an unknown one, is not found."""
        try:
            card = await self.payment_method(card_id)
        except errors.InvalidRequest:
            card = None
        if card is None or not customer_id or card.customer_id != customer_id:
            raise CardNotFound("No such saved card.")
        await self.processor._guarded(self.client.v1.payment_methods.detach_async(card_id))
