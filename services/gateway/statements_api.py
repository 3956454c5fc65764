"""Daily statements: `GET /api/statements/{day}` for a partner (signed), and the same for operators
at `GET /admin/tenants/{tenant_id}/statements/{day}`. JSON, or CSV with `?format=csv`.

A statement's numbers are the ledger's own (ledger/statements.py): for each UTC day, the opening
and closing balances of the tenant's players (every wallet together) and revenue, and every
movement of the day by account and kind, equal to the sum of that day's `GET /api/ledger/entries`.
The partner's copy carries `X-Invo-Signature` over the exact body, as a webhook does (`t=...,v1=...`
under the tenant's webhook signing secrets), so it can be kept as evidence.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any, Literal

from aiohttp import web
from invo.v1 import ledger_pb2, tenants_pb2
from pydantic import BaseModel, Field

from services.common import money, signing
from services.gateway import answers, declare, fields
from services.gateway.context import ctx_of
from services.gateway.tenants_api import iso

public = declare.Table(security=declare.SDK_KEY)
admin = declare.Table(security=declare.OPERATOR)
SIGNATURE_HEADER = "X-Invo-Signature"


class StatementQuery(fields.Query):
    format: Literal["json", "csv"] = Field(default="json", description="json (default) or csv.")


class Balance(BaseModel):
    opening: str
    closing: str


class Movement(BaseModel):
    account: str = Field(description="As GET /api/ledger/entries names it: player, revenue, network_fee, ...")
    kind: str = Field(description="The transaction's kind: item_purchase, currency_purchase, payout_hold, ...")
    count: int = Field(description="How many entries.")
    amount: str = Field(description="Their sum, in currency units (negative: out of the account).")


class Statement(answers.Answer):
    """One UTC day of a tenant's ledger."""

    tenant_id: str
    day: str
    complete: bool = Field(description="false while the day is not over (and a minute after).")
    currency_name: str
    balances: dict[str, Balance] = Field(description="players (every wallet together) and revenue.")
    movements: list[Movement]
    entries: int
    generated_at: str


async def _statement(request: web.Request, tenant: tenants_pb2.Tenant, fmt: str) -> tuple[bytes, str]:
    ctx = ctx_of(request)
    day = request.match_info["day"]
    s: ledger_pb2.Statement = await ctx.backends.call(
        ctx.backends.ledger.GetStatement, ledger_pb2.GetStatementRequest(tenant_id=tenant.tenant_id, day=day)
    )
    doc: dict[str, Any] = {
        "tenant_id": s.tenant_id,
        "day": s.day,
        "complete": s.complete,
        "currency_name": tenant.currency_name,
        "balances": {
            b.group: {"opening": money.format_units(b.opening_minor), "closing": money.format_units(b.closing_minor)}
            for b in s.balances
        },
        "movements": [
            {"account": m.account, "kind": m.kind, "count": m.count, "amount": money.format_units(m.amount_minor)}
            for m in s.movements
        ],
        "entries": s.entries,
        "generated_at": iso(s.generated_at),
    }
    if fmt == "json":
        return json.dumps(doc, separators=(",", ":")).encode(), "application/json"
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "account", "kind", "count", "amount"])
    for group, b in doc["balances"].items():
        w.writerow(["balance", group, "opening", "", b["opening"]])
        w.writerow(["balance", group, "closing", "", b["closing"]])
    for m in doc["movements"]:
        w.writerow(["movement", m["account"], m["kind"], m["count"], m["amount"]])
    w.writerow(["meta", "day", s.day, s.entries, "complete" if s.complete else "partial"])
    return out.getvalue().encode(), "text/csv"


CSV_ANSWER = declare.Answer(
    description="One UTC day of the tenant's ledger (JSON, or CSV with ?format=csv).",
    models=(Statement,),
    also={"text/csv": {"type": "string", "description": "section,account,kind,count,amount rows"}},
)


@public.declare(
    "GET",
    "/api/statements/{day}",
    summary="The tenant's statement for a UTC day (YYYY-MM-DD), signed like a webhook.",
    query=StatementQuery,
    answers={200: CSV_ANSWER},
)
async def statement(request: web.Request, query: StatementQuery) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    body, kind = await _statement(request, tenant, query.format)
    targets: tenants_pb2.GetWebhookTargetsResponse = await ctx.backends.call(
        ctx.backends.tenants.GetWebhookTargets,
        tenants_pb2.GetWebhookTargetsRequest(tenant_ids=[tenant.tenant_id], include_secrets=True),
    )
    secrets = list(targets.targets[tenant.tenant_id].secrets) if tenant.tenant_id in targets.targets else []
    resp = web.Response(body=body, content_type=kind, charset="utf-8")
    resp.headers[SIGNATURE_HEADER] = signing.signature_header(body, secrets, timestamp=int(time.time()))
    return resp


@admin.declare(
    "GET",
    "/admin/tenants/{tenant_id}/statements/{day}",
    summary="Any tenant's statement for a UTC day (YYYY-MM-DD).",
    query=StatementQuery,
    answers={200: CSV_ANSWER},
)
async def admin_statement(request: web.Request, query: StatementQuery) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = await ctx.backends.call(
        ctx.backends.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=request.match_info["tenant_id"])
    )
    body, kind = await _statement(request, tenant, query.format)
    return web.Response(body=body, content_type=kind, charset="utf-8")
