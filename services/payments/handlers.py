"""Handlers of the processor's PaymentIntent events, registered by type (registry.py).

Each finds the order the event names (our order id in the PaymentIntent's metadata, and the
PaymentIntent the order holds, if it holds one yet) and settles it through settlement.py, which
marks the event handled in the transaction that changes the order. An event that names no order
of ours is acknowledged and ignored. Refunds, disputes and fraud warnings are after_sale.py's.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from services.common import errors
from services.payments.orders import ORDER_ID_RE, OrderStore
from services.payments.processor import Outcome, outcome_of
from services.payments.registry import Handled, Registry
from services.payments.settlement import Settlement

log = logging.getLogger("invo.payments.handlers")


def _object(payload: dict[str, Any]) -> dict[str, Any]:
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise errors.InvalidRequest("malformed processor event")
    return obj


class PaymentIntentHandlers:
    def __init__(self, store: OrderStore, settlement: Settlement) -> None:
        self.store = store
        self.settlement = settlement

    def register(self, registry: Registry) -> None:
        registry.register("payment_intent.succeeded", self.succeeded)
        registry.register("payment_intent.payment_failed", self.payment_failed)
        registry.register("payment_intent.canceled", self.canceled)

    async def _order(self, event_id: str, obj: dict[str, Any]) -> asyncpg.Record | None:
        metadata = obj.get("metadata")
        order_id = metadata.get("order_id", "") if isinstance(metadata, dict) else ""
        row = await self.store.find(order_id) if isinstance(order_id, str) and ORDER_ID_RE.match(order_id) else None
        if row is None or (row["payment_intent_id"] and row["payment_intent_id"] != obj["id"]):
            log.warning("processor event %s names no order of ours", event_id)
            return None
        return row

    async def succeeded(self, event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        obj = _object(payload)
        row = await self._order(event_id, obj)
        if row is None:
            return Handled("ignored: names no order of ours", ignored=True)
        done, _ = await self.settlement.complete(
            row, outcome_of(obj), source="webhook", deadline=deadline, event_id=event_id
        )
        # Settlement.complete marked the event on every path (applied, settled already, held).
        if done["review_reason"]:
            return Handled(f"held for review: {done['review_reason']}", ignored=True, marked=True)
        # Refunds, disputes and warnings of this payment that came before it can be applied now.
        return Handled("applied", unblocks=(f"paid:{obj['id']}",), marked=True)

    async def payment_failed(self, event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        obj = _object(payload)
        row = await self._order(event_id, obj)
        if row is None:
            return Handled("ignored: names no order of ours", ignored=True)
        err = obj.get("last_payment_error")
        err = err if isinstance(err, dict) else {}
        outcome = Outcome(
            status="declined",
            payment_intent_id=obj["id"],
            failure_code=err.get("code") or "card_declined",
            failure_message=err.get("message") or "",
            decline_code=err.get("decline_code") or "",
        )
        await self.settlement.fail(row, outcome, to_status="failed", source="webhook", event_id=event_id)
        return Handled("applied")

    async def canceled(self, event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        obj = _object(payload)
        row = await self._order(event_id, obj)
        if row is None:
            return Handled("ignored: names no order of ours", ignored=True)
        outcome = Outcome(
            status="canceled",
            payment_intent_id=obj["id"],
            failure_code="payment_canceled",
            failure_message="The payment was canceled.",
        )
        await self.settlement.fail(row, outcome, to_status="cancelled", source="webhook", event_id=event_id)
        return Handled("applied")
