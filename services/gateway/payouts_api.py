"""Partner payouts (the Platform Partners seed): the partner asks and reads (`/api/payouts`), INVO
operators review (`/admin/payouts`), the payouts service does the rest. Bodies are declared in
`payouts_schema.py`. An account number crosses this gateway once, on its way in; every answer
carries its last four digits only."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from invo.v1 import payouts_pb2, tenants_pb2

from services.common import money
from services.gateway import declare, operators
from services.gateway.context import ctx_of
from services.gateway.http import json_response
from services.gateway.payouts_schema import (
    AdminPayout,
    AdminPayoutAnswer,
    AdminPayoutBody,
    AdminPayoutList,
    AdminPayoutQuery,
    PayoutAnswer,
    PayoutBody,
    PayoutDetail,
    PayoutList,
    PayoutQuery,
    RejectBody,
)
from services.gateway.tenants_api import iso, iso_of

public = declare.Table(security=declare.SDK_KEY)
admin = declare.Table(security=declare.OPERATOR)


def payout_json(p: payouts_pb2.Payout, *, history: bool = True, admin: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "payout_id": p.payout_id,
        "status": p.status,
        "usd_amount": money.format_usd(p.usd_cents),
        "contact_email": p.contact_email,
        "bank_account": {
            "account_holder_name": p.account_holder_name,
            "routing_number": p.routing_number,
            "account_type": p.account_type,
            "account_last4": p.account_last4,
        },
        "approvals_required": p.approvals_required,
        "approvals_received": len(p.approvals),
        "reason": p.reason or None,
        "return_code": p.return_code or None,
        "return_reason": p.return_reason or None,
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
        "approved_at": iso_of(p, "approved_at"),
        "completed_at": iso_of(p, "completed_at"),
        "ended_at": iso_of(p, "ended_at"),
    }
    if history:
        out["history"] = [
            {"from": h.from_status or None, "to": h.to_status, "source": h.source, "reason": h.reason, "at": iso(h.at)}
            for h in p.history
        ]
    if admin:
        out.update(
            tenant_id=p.tenant_id,
            requested_by=p.requested_by,
            approvals=[{"operator_id": a.operator_id, "at": iso(a.at)} for a in p.approvals],
            provider_payment_order_id=p.provider_order_id or None,
        )
    return out


def _request(body: PayoutBody, *, tenant_id: str, environment: str, operator_id: str = "") -> Any:
    return payouts_pb2.RequestPayoutRequest(
        tenant_id=tenant_id,
        environment=environment,
        operator_id=operator_id,
        usd_cents=body.usd_amount,
        contact_email=body.contact_email,
        account_holder_name=body.account_holder_name,
        routing_number=body.routing_number,
        account_number=body.account_number,
        account_type=body.account_type,
        idempotency_key=body.idempotency_key,
    )


def _timeout_s(request: web.Request, provider_calls: int = 0) -> float:
    s = ctx_of(request).settings
    return 2 * s.rpc_timeout_s + provider_calls * s.ach_timeout_s


# -- the partner ---------------------------------------------------------------------------------


@public.declare(
    "POST",
    "/api/payouts",
    summary="Ask for a payout of your owed revenue to a bank account by ACH (held at once, reviewed by INVO).",
    body=PayoutBody,
    answers={201: PayoutAnswer, 200: PayoutAnswer},
    errors=(409,),
)
async def request_payout(request: web.Request, body: PayoutBody) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    answer: payouts_pb2.PayoutAnswer = await ctx.backends.call(
        ctx.backends.payouts.RequestPayout,
        _request(body, tenant_id=tenant.tenant_id, environment=tenant.environment),
        timeout_s=_timeout_s(request),
    )
    out = payout_json(answer.payout)
    out["duplicate"] = answer.duplicate
    return json_response(out, status=200 if answer.duplicate else 201)


@public.declare(
    "GET",
    "/api/payouts",
    summary="Your payouts, newest first.",
    query=PayoutQuery,
    answers={200: PayoutList},
)
async def list_payouts(request: web.Request, query: PayoutQuery) -> web.Response:
    ctx = ctx_of(request)
    resp: payouts_pb2.ListPayoutsResponse = await ctx.backends.call(
        ctx.backends.payouts.ListPayouts,
        payouts_pb2.ListPayoutsRequest(
            tenant_id=request["tenant_id"],
            status=query.status or "",
            starting_after=query.starting_after or "",
            limit=query.limit,
        ),
    )
    return json_response({"data": [payout_json(p, history=False) for p in resp.payouts], "has_more": resp.has_more})


@public.declare(
    "GET",
    "/api/payouts/{payout_id}",
    summary="One of your payouts with its history.",
    answers={200: PayoutDetail},
    errors=(404,),
)
async def get_payout(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    answer: payouts_pb2.PayoutAnswer = await ctx.backends.call(
        ctx.backends.payouts.GetPayout,
        payouts_pb2.PayoutLookup(tenant_id=request["tenant_id"], payout_id=request.match_info["payout_id"]),
    )
    return json_response(payout_json(answer.payout))


@public.declare(
    "POST",
    "/api/payouts/{payout_id}/cancel",
    summary="Cancel a payout still waiting for review: the amount is owed to you again.",
    answers={200: PayoutAnswer},
    errors=(404, 409),
)
async def cancel_payout(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    answer: payouts_pb2.PayoutAnswer = await ctx.backends.call(
        ctx.backends.payouts.CancelPayout,
        payouts_pb2.PayoutLookup(tenant_id=request["tenant_id"], payout_id=request.match_info["payout_id"]),
        timeout_s=_timeout_s(request),
    )
    out = payout_json(answer.payout)
    out["duplicate"] = answer.duplicate
    return json_response(out)


# -- operators -----------------------------------------------------------------------------------


@admin.declare(
    "GET",
    "/admin/payouts",
    summary="Payouts of every tenant (or one), newest first; status=requested is the review queue.",
    query=AdminPayoutQuery,
    answers={200: AdminPayoutList},
)
async def admin_list(request: web.Request, query: AdminPayoutQuery) -> web.Response:
    ctx = ctx_of(request)
    resp: payouts_pb2.ListPayoutsResponse = await ctx.backends.call(
        ctx.backends.payouts.ListPayouts,
        payouts_pb2.ListPayoutsRequest(
            tenant_id=query.tenant_id or "",
            any_tenant=True,
            status=query.status or "",
            starting_after=query.starting_after or "",
            limit=query.limit,
        ),
    )
    return json_response(
        {"data": [payout_json(p, history=False, admin=True) for p in resp.payouts], "has_more": resp.has_more}
    )


@admin.declare(
    "GET",
    "/admin/payouts/{payout_id}",
    summary="Any tenant's payout, with its approvals and history.",
    answers={200: AdminPayout},
    errors=(404,),
)
async def admin_get(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    answer: payouts_pb2.PayoutAnswer = await ctx.backends.call(
        ctx.backends.payouts.GetPayout,
        payouts_pb2.PayoutLookup(payout_id=request.match_info["payout_id"], any_tenant=True),
    )
    return json_response(payout_json(answer.payout, admin=True))


@admin.declare(
    "POST",
    "/admin/payouts",
    summary="Ask for a payout on a tenant's behalf (another operator must approve it).",
    body=AdminPayoutBody,
    answers={201: AdminPayoutAnswer, 200: AdminPayoutAnswer},
    errors=(404, 409),
)
async def admin_request(request: web.Request, body: AdminPayoutBody) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = await ctx.backends.call(
        ctx.backends.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=body.tenant_id)
    )
    answer: payouts_pb2.PayoutAnswer = await ctx.backends.call(
        ctx.backends.payouts.RequestPayout,
        _request(
            body,
            tenant_id=tenant.tenant_id,
            environment=tenant.environment,
            operator_id=request.get("operator_id", operators.BOOTSTRAP_OPERATOR),
        ),
        timeout_s=_timeout_s(request),
    )
    out = payout_json(answer.payout, admin=True)
    out["duplicate"] = answer.duplicate
    return json_response(out, status=200 if answer.duplicate else 201)


async def _review(request: web.Request, method: Any, reason: str = "") -> web.Response:
    ctx = ctx_of(request)
    answer: payouts_pb2.PayoutAnswer = await ctx.backends.call(
        method,
        payouts_pb2.ReviewRequest(
            payout_id=request.match_info["payout_id"],
            operator_id=request.get("operator_id", operators.BOOTSTRAP_OPERATOR),
            reason=reason,
        ),
        timeout_s=_timeout_s(request, provider_calls=2),
    )
    return json_response(payout_json(answer.payout, admin=True))


@admin.declare(
    "POST",
    "/admin/payouts/{payout_id}/approve",
    summary="Approve a requested payout (not your own request; two approvers above the threshold); it is then sent.",
    answers={200: AdminPayout},
    errors=(404, 409),
)
async def approve(request: web.Request) -> web.Response:
    return await _review(request, ctx_of(request).backends.payouts.ApprovePayout)


@admin.declare(
    "POST",
    "/admin/payouts/{payout_id}/reject",
    summary="Reject a requested payout, with a reason: the amount is owed to the tenant again.",
    body=RejectBody,
    answers={200: AdminPayout},
    errors=(404, 409),
)
async def reject(request: web.Request, body: RejectBody) -> web.Response:
    return await _review(request, ctx_of(request).backends.payouts.RejectPayout, body.reason)
