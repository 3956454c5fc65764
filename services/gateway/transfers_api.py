"""Cross-tenant transfers (the Platform Partners seed): where your users may send, the two flows
(self-transfer and send), reading them, and in development the SMS outbox.

Every call goes to the transfers service with the caller's tenant as the gateway authenticated it;
the service checks both tenants' transfer policy on every call (`services/transfers/policy.py`).
Bodies are declared in `transfers_schema.py`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from aiohttp import web
from invo.v1 import tenants_pb2, transfers_pb2
from pydantic import Field

from services.common import errors, money
from services.gateway import answers, declare
from services.gateway.context import ctx_of
from services.gateway.fields import Request, metadata_json
from services.gateway.http import json_response
from services.gateway.tenants_api import iso
from services.gateway.transfers_schema import (
    Claim,
    DevSmsList,
    DevSmsQuery,
    InitiateSend,
    InitiateTransfer,
    ResendSms,
    TransferAnswer,
    TransferDetail,
    TransferList,
    TransferQuery,
    Verified,
    VerifySms,
)

public = declare.Table(security=declare.SDK_KEY)
admin = declare.Table(security=declare.OPERATOR)

LIMIT_MAX = 100
TenantId = Annotated[str, Field(pattern=r"^tn_[0-9A-Z]{26}$", examples=["tn_01JD3Q7Z8X9Y0A1B2C3D4E5F6G"])]


class Destinations(Request):
    limit: Annotated[int, Field(ge=1, le=LIMIT_MAX)] = Field(
        default=LIMIT_MAX, examples=[LIMIT_MAX], description=f"At most this many (1 to {LIMIT_MAX})."
    )
    starting_after: TenantId | None = Field(
        default=None, description="The next page: the previous answer's next_starting_after."
    )


class Destination(answers.Answer):
    tenant_id: str
    name: str
    currency_name: str


class DestinationList(answers.Answer):
    """The active tenants reachable from yours, in tenant_id order; more when has_more."""

    data: list[Destination]
    has_more: bool
    next_starting_after: str | None


@public.declare(
    "POST",
    "/api/transfers/available-destinations",
    summary="The tenants your users may transfer to, under both tenants' transfer policy.",
    body=Destinations,
    body_required=False,
    answers={200: DestinationList},
)
async def available_destinations(request: web.Request, body: Destinations) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    resp: transfers_pb2.ListDestinationsResponse = await ctx.backends.call(
        ctx.backends.transfers.ListDestinations,
        transfers_pb2.ListDestinationsRequest(
            source_tenant_id=tenant.tenant_id, after_tenant_id=body.starting_after or "", limit=body.limit
        ),
    )
    return json_response(
        {
            "data": [
                {"tenant_id": d.tenant_id, "name": d.name, "currency_name": d.currency_name} for d in resp.destinations
            ],
            "has_more": resp.has_more,
            "next_starting_after": resp.next_after_tenant_id or None,
        }
    )


# -- a transfer as JSON --------------------------------------------------------------------------


def _time(msg: Any, field: str) -> str | None:
    return iso(getattr(msg, field)) if msg.HasField(field) else None


def transfer_json(t: transfers_pb2.Transfer, *, history: bool = False) -> dict[str, Any]:
    units = money.format_units
    source = t.role == "source"
    waiting = source and t.status == "pending_verification"
    balance = t.sender_balance_minor if source else t.recipient_balance_minor
    has_balance = t.HasField("sender_balance_minor") if source else t.HasField("recipient_balance_minor")
    out: dict[str, Any] = {
        "transfer_id": t.transfer_id,
        "type": t.kind,
        "status": t.status,
        "role": t.role,
        "source_tenant_id": t.source_tenant_id,
        "destination_tenant_id": t.destination_tenant_id or None,
        "sender_email": t.sender_email or None,
        "recipient_email": t.recipient_email or None,
        "sender_phone": t.sender_phone_masked or None,
        "recipient_phone": t.recipient_phone_masked or None,
        "amount": units(t.amount_minor),
        "fee_breakdown": {
            "source_tenant": units(t.fee.source_minor),
            "destination_tenant": units(t.fee.destination_minor),
            "network": units(t.fee.network_minor),
            "total": units(t.fee.total_minor),
        },
        "total_debited": units(t.amount_minor + t.fee.total_minor),
        "new_balance": units(balance) if has_balance else None,
        "pin_attempts_remaining": t.pin_attempts_remaining if waiting else None,
        "pin_sends_remaining": t.pin_sends_remaining if waiting else None,
        "pin_expires_at": _time(t, "pin_expires_at") if waiting else None,
        "verification_expires_at": iso(t.verify_by) if waiting else None,
        "claim_expires_at": _time(t, "claim_expires_at"),
        "end_reason": t.end_reason or None,
        "hold_transaction_id": t.hold_transaction_id or None,
        "transaction_id": t.release_transaction_id or None,
        "metadata": json.loads(t.metadata_json) if source and t.metadata_json else None,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
        "verified_at": _time(t, "verified_at"),
        "completed_at": _time(t, "completed_at"),
        "ended_at": _time(t, "ended_at"),
    }
    if history:
        out["history"] = [
            {"from": h.from_status or None, "to": h.to_status, "source": h.source, "reason": h.reason, "at": iso(h.at)}
            for h in t.history
        ]
    return out


def _answer(a: transfers_pb2.TransferAnswer, *, created: bool = False) -> web.Response:
    body = transfer_json(a.transfer)
    body["duplicate"] = a.duplicate
    return json_response(body, status=201 if created and not a.duplicate else 200)


# -- the two flows ---------------------------------------------------------------------------------

WRITE_ERRORS = (402, 403, 409, 429)


async def _initiate(request: web.Request, kind: str, body: InitiateTransfer | InitiateSend) -> web.Response:
    ctx = ctx_of(request)
    req = transfers_pb2.InitiateRequest(
        tenant=request["tenant"],
        kind=kind,
        sender_email=body.player_email,
        sender_phone=body.sender_phone,
        amount_minor=body.amount,
        idempotency_key=body.idempotency_key,
        metadata_json=metadata_json(body.metadata),
    )
    if isinstance(body, InitiateTransfer):
        req.destination_tenant_id = body.destination_tenant_id
    else:
        req.recipient_phone = body.recipient_phone
    # The tenant's lookup, the ledger's hold, the PIN's text.
    answer = await ctx.backends.call(
        ctx.backends.transfers.Initiate, req, timeout_s=3 * ctx.settings.rpc_timeout_s + ctx.settings.sms_timeout_s
    )
    return _answer(answer, created=True)


@public.declare(
    "POST",
    "/api/transfers/initiate-transfer",
    summary="Start a self-transfer: hold amount + 10% from your player and text them a PIN.",
    body=InitiateTransfer,
    answers={201: TransferAnswer, 200: TransferAnswer},
    errors=WRITE_ERRORS,
)
async def initiate_transfer(request: web.Request, body: InitiateTransfer) -> web.Response:
    return await _initiate(request, "self_transfer", body)


@public.declare(
    "POST",
    "/api/transfers/initiate-send",
    summary="Start a send to a phone number: hold amount + 10% from your player and text them a PIN.",
    body=InitiateSend,
    answers={201: TransferAnswer, 200: TransferAnswer},
    errors=WRITE_ERRORS,
)
async def initiate_send(request: web.Request, body: InitiateSend) -> web.Response:
    return await _initiate(request, "send", body)


@public.declare(
    "POST",
    "/api/transfers/verify-sms",
    summary="Check the sender's PIN: the transfer becomes claimable and its claim code is texted.",
    body=VerifySms,
    answers={200: Verified},
    errors=(403, 404, 409, 410),
)
async def verify_sms(request: web.Request, body: VerifySms) -> web.Response:
    ctx = ctx_of(request)
    answer: transfers_pb2.TransferAnswer = await ctx.backends.call(
        ctx.backends.transfers.VerifySms,
        transfers_pb2.VerifySmsRequest(tenant=request["tenant"], transfer_id=body.transfer_id, pin=body.pin),
        timeout_s=2 * ctx.settings.rpc_timeout_s + ctx.settings.sms_timeout_s,
    )
    out = transfer_json(answer.transfer)
    out["claim_code"] = answer.claim_code or None
    return json_response(out)


@public.declare(
    "POST",
    "/api/transfers/resend-sms",
    summary="Text the sender a new PIN (the previous one stops working); limited in number and by a cool-down.",
    body=ResendSms,
    answers={200: TransferAnswer},
    errors=(404, 409, 410, 429),
)
async def resend_sms(request: web.Request, body: ResendSms) -> web.Response:
    ctx = ctx_of(request)
    answer = await ctx.backends.call(
        ctx.backends.transfers.ResendSms,
        transfers_pb2.TransferRef(tenant=request["tenant"], transfer_id=body.transfer_id),
        timeout_s=ctx.settings.rpc_timeout_s + ctx.settings.sms_timeout_s,
    )
    return _answer(answer)


async def _claim(request: web.Request, kind: str, body: Claim) -> web.Response:
    ctx = ctx_of(request)
    answer = await ctx.backends.call(
        ctx.backends.transfers.Claim,
        transfers_pb2.ClaimRequest(
            tenant=request["tenant"], kind=kind, claim_code=body.claim_code, recipient_email=body.player_email
        ),
        timeout_s=3 * ctx.settings.rpc_timeout_s,
    )
    return _answer(answer)


CLAIM_ERRORS = (403, 404, 409, 410, 429)


@public.declare(
    "POST",
    "/api/transfers/claim-transfer",
    summary="As the destination of a self-transfer, credit your player with it by its claim code.",
    body=Claim,
    answers={200: TransferAnswer},
    errors=CLAIM_ERRORS,
)
async def claim_transfer(request: web.Request, body: Claim) -> web.Response:
    return await _claim(request, "self_transfer", body)


@public.declare(
    "POST",
    "/api/transfers/claim-currency",
    summary="Credit your player with a send by the claim code texted to them.",
    body=Claim,
    answers={200: TransferAnswer},
    errors=CLAIM_ERRORS,
)
async def claim_currency(request: web.Request, body: Claim) -> web.Response:
    return await _claim(request, "send", body)


@public.declare(
    "POST",
    "/api/transfers/{transfer_id}/cancel",
    summary="Cancel a transfer not yet claimed (source only): amount and fee go back to the sender.",
    answers={200: TransferAnswer},
    errors=(403, 404, 409, 410),
)
async def cancel(request: web.Request) -> web.Response:
    return await cancel_as(request, request["tenant"])


async def cancel_as(request: web.Request, tenant: tenants_pb2.Tenant) -> web.Response:
    """Cancel the path's transfer as `tenant` (the caller's own, or an operator's choice)."""
    ctx = ctx_of(request)
    answer = await ctx.backends.call(
        ctx.backends.transfers.Cancel,
        transfers_pb2.TransferRef(tenant=tenant, transfer_id=request.match_info["transfer_id"]),
        timeout_s=2 * ctx.settings.rpc_timeout_s,
    )
    return _answer(answer)


@public.declare(
    "GET",
    "/api/transfers/{transfer_id}",
    summary="A transfer your tenant sent or received, with its history.",
    answers={200: TransferDetail},
    errors=(404,),
)
async def get_transfer(request: web.Request) -> web.Response:
    return await show_as(request, request["tenant"])


async def show_as(request: web.Request, tenant: tenants_pb2.Tenant) -> web.Response:
    """The path's transfer with its history, as `tenant` reads it."""
    ctx = ctx_of(request)
    answer: transfers_pb2.TransferAnswer = await ctx.backends.call(
        ctx.backends.transfers.GetTransfer,
        transfers_pb2.TransferRef(tenant=tenant, transfer_id=request.match_info["transfer_id"]),
    )
    return json_response(transfer_json(answer.transfer, history=True))


@public.declare(
    "GET",
    "/api/transfers",
    summary="The transfers your tenant sent or received, newest first.",
    query=TransferQuery,
    answers={200: TransferList},
)
async def list_transfers(request: web.Request, query: TransferQuery) -> web.Response:
    return await list_as(request, request["tenant_id"], query)


async def list_as(request: web.Request, tenant_id: str, query: TransferQuery) -> web.Response:
    """The transfers `tenant_id` sent or received, newest first."""
    ctx = ctx_of(request)
    resp: transfers_pb2.ListTransfersResponse = await ctx.backends.call(
        ctx.backends.transfers.ListTransfers,
        transfers_pb2.ListTransfersRequest(
            tenant_id=tenant_id,
            status=query.status or "",
            role=query.role or "",
            starting_after=query.starting_after or "",
            limit=query.limit,
        ),
    )
    return json_response({"data": [transfer_json(t) for t in resp.transfers], "has_more": resp.has_more})


@admin.declare(
    "GET",
    "/admin/dev/sms",
    summary="Development only: the texts the SMS outbox kept (PINs, claim codes), newest first; 404 elsewhere.",
    query=DevSmsQuery,
    answers={200: DevSmsList},
    errors=(404,),
)
async def dev_sms(request: web.Request, query: DevSmsQuery) -> web.Response:
    ctx = ctx_of(request)
    if ctx.settings.environment != "development" or ctx.settings.sms_provider != "outbox":
        raise errors.NotFound("No such route.")  # exists only in development
    resp: transfers_pb2.ListDevSmsResponse = await ctx.backends.call(
        ctx.backends.transfers.ListDevSms, transfers_pb2.ListDevSmsRequest(phone=query.phone or "", limit=query.limit)
    )
    return json_response(
        {"data": [{"to": m.to, "body": m.body, "created_at": iso(m.created_at)} for m in resp.messages]}
    )
