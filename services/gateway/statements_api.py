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
import datetime
import io
import json
import time
from typing import Annotated, Any, Literal

from aiohttp import web
from invo.v1 import ledger_pb2, tenants_pb2
from pydantic import BaseModel, Field

from services.common import money, signing
from services.gateway import answers, declare, fields
from services.gateway.context import ctx_of
from services.gateway.http import json_response
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


class VolumesQuery(fields.Query):
    hours: Annotated[int, fields.query_int(1, 168)] | None = Field(default=None, description="1 to 168; 48 by default.")


class Hour(BaseModel):
    hour: str = Field(description="The hour's start, UTC.")
    counts: dict[str, int] = Field(description="Transactions by kind (item_purchase, clawback_refund, ...).")


class Volumes(answers.Answer):
    """The network's transactions per hour and kind, every hour of the window (empty ones too)."""

    since: str
    hours: list[Hour]


@admin.declare(
    "GET",
    "/admin/volumes",
    summary="The network's transactions per hour and kind over the last hours (48 by default).",
    query=VolumesQuery,
    answers={200: Volumes},
)
async def volumes(request: web.Request, query: VolumesQuery) -> web.Response:
    ctx = ctx_of(request)
    hours = query.hours or 48
    v: ledger_pb2.Volumes = await ctx.backends.call(
        ctx.backends.ledger.GetVolumes, ledger_pb2.GetVolumesRequest(hours=hours)
    )
    since = v.since.ToDatetime(tzinfo=datetime.UTC)
    by_hour: dict[datetime.datetime, dict[str, int]] = {since + datetime.timedelta(hours=h): {} for h in range(hours)}
    for b in v.buckets:
        by_hour.setdefault(b.hour.ToDatetime(tzinfo=datetime.UTC), {})[b.kind] = b.count
    return json_response(
        {
            "since": iso(v.since),
            "hours": [
                {"hour": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "counts": counts} for at, counts in sorted(by_hour.items())
            ],
        }
    )
