"""Currency purchases (the seed's "Direct API"), 3-D Secure confirmation and order details. The
processor's webhooks in are `processor_webhooks.py`."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from invo.v1 import payments_pb2, tenants_pb2

from services.common import money
from services.gateway import declare, fields, payments_schema
from services.gateway.context import ctx_of
from services.gateway.http import json_response
from services.gateway.orders_api import order_json
from services.gateway.payments_schema import ConfirmPayment, OrderQuery, PurchaseCurrency

# Validated by their declarations (payments_schema.py), which also document them.
public = declare.Table(security=declare.SDK_KEY)


def tenant_context(tenant: tenants_pb2.Tenant) -> payments_pb2.TenantContext:
    ctx = payments_pb2.TenantContext(
        tenant_id=tenant.tenant_id, environment=tenant.environment, currency_name=tenant.currency_name
    )
    caps: Any = tenant.spending_caps
    for period in ("hourly", "daily", "monthly"):
        if caps.HasField(f"{period}_usd_cents"):
            setattr(ctx, f"{period}_cap_usd_cents", getattr(caps, f"{period}_usd_cents"))
    return ctx


def _outcome_json(out: payments_pb2.PurchaseOutcome) -> tuple[int, dict[str, Any]]:
    o = out.order
    if out.status == "requires_action":
        return 200, {
            "status": "requires_action",
            "client_secret": out.client_secret,
            "payment_intent_id": o.payment_intent_id,
            "order_id": o.order_id,
            "new_balance": None,
            "duplicate": out.duplicate,
        }
    if out.status == "pending":
        return 409, {
            "status": "pending",
            "duplicate": True,
            "order_id": o.order_id,
            "purchase_reference": o.purchase_reference,
            "message": "A purchase with this purchase_reference is in flight; retry shortly with the same reference.",
        }
    return 200, {
        "status": "success",
        "transaction_id": o.transaction_id,
        "order_id": o.order_id,
        "player_email": o.player_email,
        "identity_id": o.identity_id,
        "usd_amount": money.format_usd(o.usd_cents),
        "currency_amount": money.format_units(o.currency_amount_minor),
        "currency_name": o.currency_name,
        "new_balance": money.format_units(out.new_balance_minor) if out.HasField("new_balance_minor") else None,
        "duplicate": out.duplicate,
        "debt_repaid": money.format_units(o.debt_repaid_minor),
        "currency_credited": money.format_units(o.currency_amount_minor - o.debt_repaid_minor),
        "already_processed": out.already_processed,
    }


@public.adopt(payments_schema.PURCHASE_CURRENCY)
async def purchase_currency(request: web.Request, body: PurchaseCurrency) -> web.Response:
    ctx = ctx_of(request)
    out = await ctx.backends.call(
        ctx.backends.payments.PurchaseCurrency,
        payments_pb2.PurchaseCurrencyRequest(
            tenant=tenant_context(request["tenant"]),
            player_email=body.player_email,
            usd_cents=body.usd_amount,
            payment_method_id=body.payment_method_id,
            purchase_reference=body.purchase_reference,
            metadata_json=fields.metadata_json(body.metadata),
        ),
        # Create and confirm at the processor, then the ledger's credit.
        timeout_s=2 * ctx.settings.processor_timeout_s + ctx.settings.rpc_timeout_s,
    )
    status, payload = _outcome_json(out)
    payload.pop("already_processed", None)
    return json_response(payload, status=status)


@public.adopt(payments_schema.CONFIRM_PAYMENT)
async def confirm_payment(request: web.Request, body: ConfirmPayment) -> web.Response:
    ctx = ctx_of(request)
    out = await ctx.backends.call(
        ctx.backends.payments.ConfirmPayment,
        payments_pb2.ConfirmPaymentRequest(
            tenant=tenant_context(request["tenant"]), order_id=body.order_id, payment_intent_id=body.payment_intent_id
        ),
        timeout_s=ctx.settings.processor_timeout_s + ctx.settings.rpc_timeout_s,
    )
    status, payload = _outcome_json(out)
    if payload["status"] == "success":
        payload = {
            "status": "success",
            "transaction_id": payload["transaction_id"],
            "order_id": payload["order_id"],
            "new_balance": payload["new_balance"],
            "already_processed": payload["already_processed"],
        }
    return json_response(payload, status=status)


@public.adopt(payments_schema.ORDER_DETAILS)
async def order_details(request: web.Request, query: OrderQuery) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    o = await ctx.backends.call(
        ctx.backends.payments.GetOrder,
        payments_pb2.GetOrderRequest(tenant_id=tenant.tenant_id, order_id=query.order_id),
    )
    return json_response(order_json(o))
