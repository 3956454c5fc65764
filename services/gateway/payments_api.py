"""Currency purchases (the seed's "Direct API"), 3-D Secure confirmation and order details. The
processor's webhooks in are `processor_webhooks.py`."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from invo.v1 import payments_pb2, tenants_pb2

from services.common import errors, money
from services.common.players import normalize_email
from services.gateway.context import ctx_of
from services.gateway.http import get_str, invalid, json_response, read_json, reject_unknown
from services.gateway.ledger_api import _metadata
from services.gateway.tenants_api import iso

public = web.RouteTableDef()

PURCHASE_FIELDS = {
    "player_email",
    "usd_amount",
    "payment_method_id",
    "purchase_reference",
    "client_request_id",
    "metadata",
}


def _tenant_context(tenant: tenants_pb2.Tenant) -> payments_pb2.TenantContext:
    ctx = payments_pb2.TenantContext(
        tenant_id=tenant.tenant_id, environment=tenant.environment, currency_name=tenant.currency_name
    )
    caps: Any = tenant.spending_caps
    for period in ("hourly", "daily", "monthly"):
        if caps.HasField(f"{period}_usd_cents"):
            setattr(ctx, f"{period}_cap_usd_cents", getattr(caps, f"{period}_usd_cents"))
    return ctx


def _reference(body: dict[str, Any]) -> str:
    ref = body.get("purchase_reference")
    alias = body.get("client_request_id")
    if ref is not None and alias is not None and ref != alias:
        raise invalid("purchase_reference", "purchase_reference and client_request_id differ; send one.")
    value = ref if ref is not None else alias
    if value is None or value == "":
        raise errors.InvalidRequest(
            "purchase_reference is required: generate one per purchase attempt and resend it on every retry.",
            error_code="MISSING_PURCHASE_REFERENCE",
            extra={"param": "purchase_reference"},
        )
    if not isinstance(value, str) or len(value) > 255:
        raise errors.InvalidRequest(
            "purchase_reference must be a string of at most 255 characters.",
            error_code="INVALID_PURCHASE_REFERENCE",
            extra={"param": "purchase_reference"},
        )
    return value


def _usd_cents(body: dict[str, Any]) -> int:
    value = body.get("usd_amount")
    if value is None:
        raise errors.InvalidRequest(
            "usd_amount is required.", error_code="MISSING_PARAMETER", extra={"param": "usd_amount"}
        )
    try:
        cents = money.parse_scaled(value, places=2, field="usd_amount")
    except money.AmountError as exc:
        raise errors.InvalidRequest(str(exc) + ".", error_code="INVALID_AMOUNT", extra={"param": "usd_amount"}) from exc
    if cents <= 0:
        raise errors.InvalidRequest(
            "usd_amount must be positive.", error_code="INVALID_AMOUNT", extra={"param": "usd_amount"}
        )
    return cents


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
        "already_processed": out.already_processed,
    }


@public.post("/api/currency-purchases/purchase-currency")
async def purchase_currency(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await read_json(request)
    reject_unknown(body, PURCHASE_FIELDS)
    reference = _reference(body)
    raw_email = body.get("player_email")
    if not isinstance(raw_email, str) or not raw_email.strip():
        raise errors.InvalidRequest(
            "player_email is required.", error_code="MISSING_PARAMETER", extra={"param": "player_email"}
        )
    email = normalize_email(raw_email)
    cents = _usd_cents(body)
    pm = get_str(body, "payment_method_id", max_len=255, required=True) or ""
    out = await ctx.backends.call(
        ctx.backends.payments.PurchaseCurrency,
        payments_pb2.PurchaseCurrencyRequest(
            tenant=_tenant_context(request["tenant"]),
            player_email=email,
            usd_cents=cents,
            payment_method_id=pm,
            purchase_reference=reference,
            metadata_json=_metadata(body),
        ),
        timeout_s=ctx.settings.processor_timeout_s + ctx.settings.rpc_timeout_s,
    )
    status, payload = _outcome_json(out)
    payload.pop("already_processed", None)
    return json_response(payload, status=status)


@public.post("/api/currency-purchases/confirm-payment")
async def confirm_payment(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await read_json(request)
    reject_unknown(body, {"payment_intent_id", "order_id"})
    order_id = get_str(body, "order_id", max_len=64, required=True) or ""
    pi = get_str(body, "payment_intent_id", max_len=255, required=True) or ""
    out = await ctx.backends.call(
        ctx.backends.payments.ConfirmPayment,
        payments_pb2.ConfirmPaymentRequest(
            tenant=_tenant_context(request["tenant"]), order_id=order_id, payment_intent_id=pi
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


@public.get("/api/currency-purchases/order-details")
async def order_details(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    order_id = request.query.get("order_id", "")
    if not order_id:
        raise errors.InvalidRequest(
            "order_id is required.", error_code="MISSING_PARAMETER", extra={"param": "order_id"}
        )
    o = await ctx.backends.call(
        ctx.backends.payments.GetOrder, payments_pb2.GetOrderRequest(tenant_id=tenant.tenant_id, order_id=order_id)
    )
    return json_response(
        {
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
            "completed_at": iso(o.completed_at) if o.HasField("completed_at") else None,
            "history": [
                {
                    "from": t.from_status or None,
                    "to": t.to_status,
                    "source": t.source,
                    "reason": t.reason,
                    "at": iso(t.at),
                }
                for t in o.history
            ],
        }
    )
