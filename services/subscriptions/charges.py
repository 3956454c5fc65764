"""A period's charge: one ledger item purchase of the plan, keyed by (subscription, period), so
that however often it is sent (a retry, another replica, the sweep after a crash) the player is
debited once for that period, with the tenant's revenue split exactly as an item purchase. The
request is rebuilt from the row alone, so every retry is the same request to the ledger.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2, tenants_pb2

from services.common import errors, grpcutil

NAMESPACE = "subscriptions"
REFUSALS = ("INSUFFICIENT_BALANCE", "PLAYER_IN_DEBT")


@dataclasses.dataclass(frozen=True)
class Charged:
    transaction_id: str
    total_minor: int
    partner_amount_minor: int
    network_fee_minor: int
    new_balance_minor: int


@dataclasses.dataclass(frozen=True)
class Refused:
    error_code: str  # INSUFFICIENT_BALANCE or PLAYER_IN_DEBT
    message: str


class TenantAway(Exception):
    """The tenant is suspended or gone: nothing is charged, the subscription waits."""


class Charger:
    def __init__(self, ledger: Any, tenants: Any, *, timeout_cap_s: float) -> None:
        self.ledger = ledger
        self.tenants = tenants
        self.timeout_cap_s = timeout_cap_s

    def _timeout(self, deadline: float | None) -> float:
        return grpcutil.timeout_within(deadline, cap_s=self.timeout_cap_s)

    async def tenant(self, tenant_id: str, deadline: float | None) -> tenants_pb2.Tenant:
        try:
            t: tenants_pb2.Tenant = await grpcutil.call(
                self.tenants.GetTenant,
                tenants_pb2.GetTenantRequest(tenant_id=tenant_id),
                timeout_s=self._timeout(deadline),
            )
        except errors.NotFound as exc:
            raise TenantAway(tenant_id) from exc
        if t.status != "active":
            raise TenantAway(tenant_id)
        return t

    async def charge(
        self, row: asyncpg.Record, period: int, *, fee_bps: int, currency_name: str, deadline: float | None
    ) -> Charged | Refused:
        request = ledger_pb2.PurchaseItemRequest(
            tenant_id=row["tenant_id"],
            player_email=row["player_email"],
            item_id=row["plan_id"],
            item_name=row["plan_name"],
            price_minor=row["price_minor"],
            quantity=1,
            idempotency=ledger_pb2.Idempotency(namespace=NAMESPACE, key=f"{row['subscription_id']}:{period}"),
            metadata_json=json.dumps({"subscription_id": row["subscription_id"], "period": period}),
            network_fee_bps=fee_bps,
            currency_name=currency_name,
        )
        try:
            r: ledger_pb2.PurchaseItemResponse = await grpcutil.call(
                self.ledger.PurchaseItem, request, timeout_s=self._timeout(deadline)
            )
        except errors.PaymentRequired as exc:
            if exc.error_code in REFUSALS:
                return Refused(exc.error_code, exc.message)
            raise
        return Charged(
            transaction_id=r.transaction_id,
            total_minor=r.total_minor,
            partner_amount_minor=r.partner_amount_minor,
            network_fee_minor=r.network_fee_minor,
            new_balance_minor=r.new_balance_minor,
        )

    async def refund(self, row: asyncpg.Record, *, deadline: float | None) -> str:
        """The prorated refund the row records, keyed by (subscription, period) in the ledger: its
        transaction. Refused (the partner's revenue or the fees no longer hold it): 409."""
        request = ledger_pb2.RefundSubscriptionPeriodRequest(
            tenant_id=row["tenant_id"],
            player_email=row["player_email"],
            subscription_id=row["subscription_id"],
            period=row["refund_period"],
            partner_minor=row["refund_partner_minor"],
            fee_minor=row["refund_fee_minor"],
        )
        try:
            r: ledger_pb2.TransactionResult = await grpcutil.call(
                self.ledger.RefundSubscriptionPeriod, request, timeout_s=self._timeout(deadline)
            )
        except errors.PaymentRequired as exc:
            raise errors.Conflict(
                "Your revenue no longer holds this period's share to refund; nothing changed.",
                error_code="PRORATION_NOT_COVERED",
            ) from exc
        return r.transaction_id
