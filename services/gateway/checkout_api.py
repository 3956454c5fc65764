"""Hosted checkout with the SDK key (the seed's "Create a checkout session"): mint a session and read
its state. The page and its own API are `checkout_page.py`."""

from __future__ import annotations

import json

from aiohttp import web
from invo.v1 import payments_pb2, tenants_pb2

from services.common import money
from services.gateway import checkout_schema, declare, fields
from services.gateway.checkout_schema import CreateSession
from services.gateway.context import ctx_of
from services.gateway.http import json_response
from services.gateway.payments_api import tenant_context
from services.gateway.tenants_api import iso

public = declare.Table(security=declare.SDK_KEY)
PAGE_PATH = "/checkout/"


def checkout_url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}{PAGE_PATH}?session={token}"


def public_base(request: web.Request) -> str:
    ctx = ctx_of(request)
    return ctx.settings.public_base_url or f"http://{ctx.settings.gateway_host}:{ctx.settings.gateway_port}"


@public.adopt(checkout_schema.CREATE_SESSION)
async def create_session(request: web.Request, body: CreateSession) -> web.Response:
    ctx = ctx_of(request)
    s = await ctx.backends.call(
        ctx.backends.payments.CreateCheckoutSession,
        payments_pb2.CreateCheckoutSessionRequest(
            tenant=tenant_context(request["tenant"]),
            player_email=body.player_email,
            usd_cents=body.usd_amount,
            success_url=body.success_url,
            cancel_url=body.cancel_url,
            metadata_json=fields.metadata_json(body.metadata),
        ),
    )
    return json_response(
        {
            "session_id": s.session_id,
            "checkout_url": checkout_url(public_base(request), s.token),
            "expires_at": iso(s.expires_at),
            "expires_in_seconds": s.expires_in_seconds,
        },
        status=201,
    )


def session_state(s: payments_pb2.CheckoutSession) -> dict[str, object]:
    return {
        "session_id": s.session_id,
        "status": s.status,
        "player_email": s.player_email,
        "usd_amount": money.format_usd(s.usd_cents),
        "metadata": json.loads(s.metadata_json or "{}"),
        "order_id": s.order_id or None,
        "transaction_id": s.transaction_id or None,
        "created_at": iso(s.created_at),
        "expires_at": iso(s.expires_at),
        "completed_at": iso(s.completed_at) if s.HasField("completed_at") else None,
    }


@public.adopt(checkout_schema.GET_SESSION)
async def get_session(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    s = await ctx.backends.call(
        ctx.backends.payments.GetCheckoutSession,
        payments_pb2.GetCheckoutSessionRequest(tenant_id=tenant.tenant_id, session_id=request.match_info["session_id"]),
    )
    return json_response(session_state(s))
