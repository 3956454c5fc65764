"""Handlers of the processor's events after a sale: refunds, disputes and early fraud warnings,
registered by type (registry.py) beside the PaymentIntent ones (handlers.py).

Each finds the order the event's object names by its PaymentIntent. One that names no order of
ours is acknowledged and ignored; one whose order is not paid yet (the event came before the
payment's success) waits on `paid:<payment intent>` and is applied once the order is paid.

Events that arrived before these handlers existed were kept unhandled in the inbox (migration 0003
made it so), and the recovery loop applies them now, oldest first: nothing the processor sent
earlier is lost.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from services.common import errors
from services.payments.disputes import Disputes
from services.payments.fraud_warnings import FraudWarnings
from services.payments.orders import PAID, OrderStore
from services.payments.refunds import Refunds
from services.payments.registry import Handled, Registry

log = logging.getLogger("invo.payments.after_sale")

NOT_OURS = Handled("ignored: names no order of ours", ignored=True)


def _object(payload: dict[str, Any]) -> dict[str, Any]:
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
        raise errors.InvalidRequest("malformed processor event")
    return obj


class AfterSaleHandlers:
    def __init__(self, store: OrderStore, refunds: Refunds, disputes: Disputes, warnings: FraudWarnings) -> None:
        self.store = store
        self.refunds = refunds
        self.disputes = disputes
        self.warnings = warnings

    def register(self, registry: Registry) -> None:
        registry.register("charge.refunded", self.charge_refunded)
        registry.register("charge.dispute.created", self.dispute_created)
        registry.register("charge.dispute.closed", self.dispute_closed)
        registry.register("radar.early_fraud_warning.created", self.fraud_warning)

    async def _paid_order(self, obj: dict[str, Any]) -> tuple[asyncpg.Record | None, Handled | None]:
        """(the order, None) when it can take the event; (None, what to answer) otherwise."""
        pi = obj.get("payment_intent")
        if not isinstance(pi, str) or not pi:
            return None, NOT_OURS
        order = await self.store.by_intent(pi)
        if order is None:
            return None, NOT_OURS
        if order["status"] not in PAID or order["review_reason"]:
            return None, Handled("waiting for the payment's success", waiting_on=f"paid:{pi}")
        return order, None

    async def charge_refunded(self, event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        order, answer = await self._paid_order(_object(payload))
        if order is None:
            return answer or NOT_OURS
        applied = await self.refunds.from_processor(order, deadline=deadline)
        return Handled("applied" if applied else "refunds applied already", ignored=not applied)

    async def dispute_created(self, event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        obj = _object(payload)
        order, answer = await self._paid_order(obj)
        if order is None:
            return answer or NOT_OURS
        return await self.disputes.opened(order, obj, event_id=event_id, deadline=deadline)

    async def dispute_closed(self, event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        obj = _object(payload)
        order, answer = await self._paid_order(obj)
        if order is None:
            return answer or NOT_OURS
        return await self.disputes.closed(order, obj, event_id=event_id, deadline=deadline)

    async def fraud_warning(self, event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        obj = _object(payload)
        order, answer = await self._paid_order(obj)
        if order is None:
            return answer or NOT_OURS
        return await self.warnings.created(order, obj, event_id=event_id, deadline=deadline)
