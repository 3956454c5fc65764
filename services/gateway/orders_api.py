"""After the sale, for operators: refund an order through the processor, and read any tenant's order
with its refunds, disputes and fraud warnings. The partner's own read of an order is
`payments_api.order_details`, rendered by the same `order_json`."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from invo.v1 import payments_pb2

from services.common import money
from services.gateway import answers, declare, operators
from services.gateway.context import ctx_of
from services.gateway.http import json_response
from services.gateway.orders_schema import AdminRefundOut, RefundBody
from services.gateway.payments_schema import OrderDetails
from services.gateway.tenants_api import iso, iso_of

admin = declare.Table(security=declare.OPERATOR)


class AdminOrder(OrderDetails):
    """The order as an operator sees it: the partner's view, its tenant, and who made each refund."""

    tenant_id: str
    refunds: list[AdminRefundOut]  # type: ignore[assignment]


class Refunded(answers.Answer):
    """The refund (succeeded: the player's currency is debited) and its order. A replay of the
    idempotency key answers the first refund with duplicate: true."""

    refund: AdminRefundOut
    order: AdminOrder
    duplicate: bool


def refund_json(r: payments_pb2.Refund, *, admin: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "refund_id": r.refund_id,
        "status": r.status,
        "usd_amount": money.format_usd(r.usd_cents),
        "currency_debited": money.format_units(r.currency_minor),
        "reason": r.reason,
        "source": r.source,
        "processor_refund_id": r.processor_refund_id or None,
        "transaction_id": r.transaction_id or None,
        "new_balance": money.format_units(r.new_balance_minor) if r.HasField("new_balance_minor") else None,
        "failure_message": r.failure_message or None,
        "created_at": iso(r.created_at),
        "applied_at": iso_of(r, "applied_at"),
    }
    if admin:
        out["operator_id"] = r.operator_id or None
    return out


def order_json(o: payments_pb2.Order, *, admin: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "order_id": o.order_id,
        "status": o.status,
        "purchase_reference": o.purchase_reference,
        "player_email": o.player_email,
        "identity_id": o.identity_id,
        "usd_amount": money.format_usd(o.usd_cents),
        "currency_amount": money.format_units(o.currency_amount_minor),
        "currency_name": o.currency_name,
        "payment_intent_id": o.payment_intent_id or None,
        "transaction_id": o.transaction_id or None,
        "failure_code": o.failure_code or None,
        "failure_message": o.failure_message or None,
        "decline_code": o.decline_code or None,
        "metadata": json.loads(o.metadata_json or "{}"),
        "created_at": iso(o.created_at),
        "updated_at": iso(o.updated_at),
        "completed_at": iso_of(o, "completed_at"),
        "history": [
            {"from": t.from_status or None, "to": t.to_status, "source": t.source, "reason": t.reason, "at": iso(t.at)}
            for t in o.history
        ],
        "charge_id": o.charge_id or None,
        "usd_refunded": money.format_usd(o.usd_refunded_cents),
        "usd_refundable": money.format_usd(_refundable(o)),
        "currency_debited": money.format_units(o.currency_refunded_minor + o.currency_clawed_minor),
        "debt_repaid": money.format_units(o.debt_repaid_minor),
        "refunds": [refund_json(r, admin=admin) for r in o.refunds],
        "disputes": [
            {
                "dispute_id": d.dispute_id,
                "status": d.status,
                "outcome": d.outcome or None,
                "reason": d.reason,
                "usd_amount": money.format_usd(d.usd_cents),
                "inquiry": d.inquiry,
                "currency_frozen": money.format_units(d.frozen_minor),
                "currency_debited": money.format_units(d.clawed_minor),
                "created_at": iso(d.created_at),
                "closed_at": iso_of(d, "closed_at"),
            }
            for d in o.disputes
        ],
        "fraud_warnings": [
            {
                "warning_id": w.warning_id,
                "fraud_type": w.fraud_type,
                "actionable": w.actionable,
                "recommendation": w.recommendation,
                "refund_id": w.refund_id or None,
                "created_at": iso(w.created_at),
            }
            for w in o.fraud_warnings
        ],
    }
    if admin:
        out["tenant_id"] = o.tenant_id
    return out


def _refundable(o: payments_pb2.Order) -> int:
    """What an operator may still refund: nothing unless the order is completed and undisputed."""
    if o.status != "completed" or any(not d.outcome for d in o.disputes):
        return 0
    in_flight = sum(r.usd_cents for r in o.refunds if r.status == "pending")
    return max(0, o.usd_cents - o.usd_refunded_cents - in_flight)


@admin.declare(
    "POST",
    "/admin/orders/{order_id}/refunds",
    summary="Refund an order (all that remains, or usd_amount of it) through the processor, once per key.",
    body=RefundBody,
    answers={201: Refunded, 200: Refunded},
    errors=(404, 409, 503),
)
async def refund_order(request: web.Request, body: RefundBody) -> web.Response:
    ctx = ctx_of(request)
    req = payments_pb2.RefundOrderRequest(
        order_id=request.match_info["order_id"],
        reason=body.reason,
        idempotency_key=body.idempotency_key,
        operator_id=request.get("operator_id", operators.BOOTSTRAP_OPERATOR),
    )
    if body.usd_amount is not None:
        req.usd_cents = body.usd_amount
    out: payments_pb2.RefundOutcome = await ctx.backends.call(
        ctx.backends.payments.RefundOrder,
        req,
        # The processor's refund, then the ledger's debit.
        timeout_s=ctx.settings.processor_timeout_s + 2 * ctx.settings.rpc_timeout_s,
    )
    return json_response(
        {
            "refund": refund_json(out.refund, admin=True),
            "order": order_json(out.order, admin=True),
            "duplicate": out.duplicate,
        },
        status=200 if out.duplicate else 201,
    )


@admin.declare(
    "GET",
    "/admin/orders/{order_id}",
    summary="Any tenant's order with its history, refunds, disputes and fraud warnings.",
    answers={200: AdminOrder},
    errors=(404,),
)
async def get_order(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    o = await ctx.backends.call(
        ctx.backends.payments.GetOrder,
        payments_pb2.GetOrderRequest(order_id=request.match_info["order_id"], any_tenant=True),
    )
    return json_response(order_json(o, admin=True))
