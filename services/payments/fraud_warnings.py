"""Early fraud warnings: the card network flags a charge as likely fraud before any chargeback.

Each warning is recorded once (by its id) and announced as `purchase.fraud_warning` with a
recommendation: `consider_refund` when the warning is actionable and the order is still completed,
undisputed and not wholly refunded (a refund now is cheaper than the dispute that usually
follows), else `monitor`. A tenant with `auto_refund_fraud_warnings` on gets that refund at once,
through the refunds' own path (reserved in the warning's transaction under the key
`efw:<warning id>`, then driven; the recovery loop finishes it if this attempt cannot).
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from invo.v1 import tenants_pb2

from services.common import errors, events, grpcutil, money
from services.common.crypto import request_hash
from services.payments import inbox
from services.payments.orders import OrderStore, event_refs
from services.payments.refunds import Refunds
from services.payments.registry import Handled

log = logging.getLogger("invo.payments.fraud_warnings")

WARNING_COLUMNS = (
    "warning_id, order_id, tenant_id, charge_id, fraud_type, actionable, recommendation, refund_id, created_at"
)


def warning_event(order: asyncpg.Record, w: asyncpg.Record, refund: asyncpg.Record | None) -> dict[str, Any]:
    return {
        **event_refs(order, w["charge_id"]),
        "fraud_type": w["fraud_type"],
        "actionable": w["actionable"],
        "usd_amount": money.format_usd(order["usd_cents"]),
        "recommendation": w["recommendation"],
        "warning_id": w["warning_id"],
        "auto_refund": refund is not None,
        "refund_id": refund["refund_id"] if refund is not None else None,
    }


class FraudWarnings:
    def __init__(self, store: OrderStore, refunds: Refunds, tenants: Any, *, timeout_cap_s: float) -> None:
        self.store = store
        self.refunds = refunds
        self.tenants = tenants
        self.timeout_cap_s = timeout_cap_s
        self.pool = store.pool

    async def of_order(self, order_id: str, db: asyncpg.Connection | None = None) -> list[asyncpg.Record]:
        return list(
            await (db or self.pool).fetch(
                f"SELECT {WARNING_COLUMNS} FROM fraud_warnings WHERE order_id = $1 ORDER BY created_at, warning_id",
                order_id,
            )
        )

    async def _auto_refund(self, tenant_id: str, deadline: float | None) -> bool:
        tenant: tenants_pb2.Tenant = await grpcutil.call(
            self.tenants.GetTenant,
            tenants_pb2.GetTenantRequest(tenant_id=tenant_id),
            timeout_s=grpcutil.timeout_within(deadline, cap_s=self.timeout_cap_s),
        )
        return bool(getattr(tenant, "auto_refund_fraud_warnings", False))

    async def created(
        self, order: asyncpg.Record, warning: dict[str, Any], *, event_id: str, deadline: float | None
    ) -> Handled:
        warning_id = str(warning["id"])
        actionable = warning.get("actionable") is True
        auto = actionable and await self._auto_refund(order["tenant_id"], deadline)
        refund: asyncpg.Record | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            order = await self.store.locked(conn, order["order_id"])
            if await conn.fetchval("SELECT 1 FROM fraud_warnings WHERE warning_id = $1", warning_id):
                return Handled("the warning is recorded already", ignored=True)
            disputed = await conn.fetchval("SELECT 1 FROM disputes WHERE order_id = $1 LIMIT 1", order["order_id"])
            reserved = await conn.fetchval(
                "SELECT coalesce(sum(usd_cents), 0) FROM refunds WHERE order_id = $1 AND status <> 'failed'",
                order["order_id"],
            )
            refundable = order["status"] == "completed" and not disputed and int(reserved) < order["usd_cents"]
            recommendation = "consider_refund" if actionable and refundable else "monitor"
            if auto and recommendation == "consider_refund":
                try:
                    refund, _ = await self.refunds.reserve(
                        order["order_id"],
                        usd_cents=None,
                        reason="fraudulent",
                        key=f"efw:{warning_id}",
                        digest=request_hash({"fraud_warning": warning_id}),
                        source="fraud_warning",
                        conn=conn,
                    )
                except errors.InvoError as exc:  # nothing left to refund after all: the warning stands
                    log.info("fraud warning %s: no automatic refund (%s)", warning_id, exc.error_code)
            charge = warning.get("charge")
            row = await conn.fetchrow(
                f"INSERT INTO fraud_warnings (warning_id, order_id, tenant_id, charge_id, fraud_type, actionable,"
                f" recommendation, refund_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {WARNING_COLUMNS}",
                warning_id,
                order["order_id"],
                order["tenant_id"],
                charge if isinstance(charge, str) else None,
                str(warning.get("fraud_type") or "unknown")[:100],
                actionable,
                recommendation,
                refund["refund_id"] if refund is not None else None,
            )
            if row["charge_id"] and not order["charge_id"]:
                await conn.execute(
                    "UPDATE orders SET charge_id = $2 WHERE order_id = $1", order["order_id"], row["charge_id"]
                )
            if not await inbox.mark_handled(conn, event_id, "applied"):
                raise errors.Conflict("the warning's event was applied by another delivery meanwhile")
            await events.emit(
                conn,
                tenant_id=order["tenant_id"],
                event_type="purchase.fraud_warning",
                data=warning_event(order, row, refund),
            )
        if refund is not None:
            try:
                await self.refunds.drive(refund, deadline=deadline)
            except Exception as exc:  # stored and reserved: the recovery loop finishes it
                code = exc.error_code if isinstance(exc, errors.InvoError) else type(exc).__name__
                log.warning("automatic refund %s of warning %s: %s", refund["refund_id"], warning_id, code)
        return Handled("applied")
