"""Operators' views for support: one player in one tenant (the wallet: balance, what holds keep,
what is available, any debt; its latest ledger entries and currency orders), and the disputes and
early fraud warnings across tenants. Reads only: the actions are the routes they link to."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from invo.v1 import ledger_pb2, payments_pb2, tenants_pb2
from pydantic import BaseModel, Field

from services.common import limits, money
from services.gateway import answers, declare, fields
from services.gateway.context import ctx_of
from services.gateway.http import json_response
from services.gateway.tenants_api import iso

admin = declare.Table(security=declare.OPERATOR)
ENTRIES_SHOWN = 50
ORDERS_SHOWN = 20


class PlayerQuery(fields.Query):
    player_email: fields.Email


class PlayerEntry(BaseModel):
    transaction_id: str
    kind: str
    amount: str
    balance_after: str
    created_at: str


class PlayerOrder(BaseModel):
    order_id: str
    status: str
    usd_amount: str
    currency_amount: str
    created_at: str


class Player(answers.Answer):
    """One player's wallet in a tenant, with its latest entries and orders, newest first."""

    tenant_id: str
    player_email: str
    currency_name: str
    balance: str
    held: str = Field(description="Kept by holds (a dispute's freeze, a transfer waiting).")
    available: str
    in_debt: bool = Field(description="The balance is below zero (a refund or lost dispute after spending).")
    entries: list[PlayerEntry] = Field(description=f"The latest {ENTRIES_SHOWN}, newest first.")
    orders: list[PlayerOrder] = Field(description=f"The latest {ORDERS_SHOWN}, newest first.")


@admin.declare(
    "GET",
    "/admin/tenants/{tenant_id}/player",
    summary="One player of a tenant: balance, holds, debt, latest entries and orders.",
    query=PlayerQuery,
    answers={200: Player},
)
async def player(request: web.Request, query: PlayerQuery) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = await ctx.backends.call(
        ctx.backends.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=request.match_info["tenant_id"])
    )
    email = query.player_email
    balances: ledger_pb2.GetPlayerBalancesResponse = await ctx.backends.call(
        ctx.backends.ledger.GetPlayerBalances,
        ledger_pb2.GetPlayerBalancesRequest(
            players=[ledger_pb2.PlayerRef(tenant_id=tenant.tenant_id, player_email=email)]
        ),
    )
    entries: ledger_pb2.ListEntriesResponse = await ctx.backends.call(
        ctx.backends.ledger.ListEntries,
        ledger_pb2.ListEntriesRequest(
            tenant_id=tenant.tenant_id, player_email=email, newest_first=True, limit=ENTRIES_SHOWN
        ),
    )
    orders: payments_pb2.ListPlayerOrdersResponse = await ctx.backends.call(
        ctx.backends.payments.ListPlayerOrders,
        payments_pb2.ListPlayerOrdersRequest(tenant_id=tenant.tenant_id, player_email=email, limit=ORDERS_SHOWN),
    )
    b = balances.balances[0]
    body: dict[str, Any] = {
        "tenant_id": tenant.tenant_id,
        "player_email": b.player_email or email,
        "currency_name": tenant.currency_name,
        "balance": money.format_units(b.balance_minor),
        "held": money.format_units(b.pending_minor),
        "available": money.format_units(b.available_minor),
        "in_debt": b.balance_minor < 0,
        "entries": [
            {
                "transaction_id": e.transaction_id,
                "kind": e.kind,
                "amount": money.format_units(e.amount_minor),
                "balance_after": money.format_units(e.balance_after_minor),
                "created_at": iso(e.created_at),
            }
            for e in entries.entries
        ],
        "orders": [
            {
                "order_id": o.order_id,
                "status": o.status,
                "usd_amount": money.format_usd(o.usd_cents),
                "currency_amount": money.format_units(o.currency_amount_minor),
                "created_at": iso(o.created_at),
            }
            for o in orders.orders
        ],
    }
    return json_response(body)


class AfterSaleQuery(fields.Query):
    tenant_id: Annotated[str, Field(pattern=limits.TENANT_ID_PATTERN)] | None = None
    open_only: Literal["true", "false"] = Field(default="false", description="true: only disputes not yet closed.")
    limit: Annotated[int, fields.query_int(1, 200)] | None = None


class AfterSaleItem(BaseModel):
    kind: str = Field(description="dispute or fraud_warning")
    id: str
    order_id: str
    tenant_id: str
    status: str = Field(description="A dispute's processor status; a warning's recommendation.")
    detail: str = Field(description="A dispute's reason; a warning's fraud type.")
    usd_amount: str | None
    outcome: str | None
    created_at: str


class AfterSale(answers.Answer):
    """Disputes (and, unless open_only, early fraud warnings), newest first."""

    data: list[AfterSaleItem]


@admin.declare(
    "GET",
    "/admin/disputes",
    summary="Disputes and early fraud warnings, newest first: the open disputes, or every recent one.",
    query=AfterSaleQuery,
    answers={200: AfterSale},
)
async def after_sale(request: web.Request, query: AfterSaleQuery) -> web.Response:
    ctx = ctx_of(request)
    req = payments_pb2.ListAfterSaleRequest(tenant_id=query.tenant_id or "", open_only=query.open_only == "true")
    if query.limit is not None:
        req.limit = query.limit
    resp: payments_pb2.ListAfterSaleResponse = await ctx.backends.call(ctx.backends.payments.ListAfterSale, req)
    return json_response(
        {
            "data": [
                {
                    "kind": i.kind,
                    "id": i.id,
                    "order_id": i.order_id,
                    "tenant_id": i.tenant_id,
                    "status": i.status,
                    "detail": i.detail,
                    "usd_amount": money.format_usd(i.usd_cents) if i.kind == "dispute" else None,
                    "outcome": i.outcome or None,
                    "created_at": iso(i.created_at),
                }
                for i in resp.items
            ]
        }
    )
