"""Operators' view of transfers: any tenant's, read as that tenant reads them, and cancelled on its
behalf (the source tenant's right: the held amount and fee go back to the sender at once).

The routes call the transfers service's own RPCs with the tenant the path names, so an operator
sees exactly what the tenant's API answers and cancels under the same rules (only a transfer not
yet claimed, only as its source: 403 otherwise)."""

from __future__ import annotations

from aiohttp import web
from invo.v1 import tenants_pb2, transfers_pb2

from services.gateway import declare, transfers_api
from services.gateway.context import ctx_of
from services.gateway.http import json_response
from services.gateway.transfers_schema import TransferAnswer, TransferDetail, TransferList, TransferQuery

admin = declare.Table(security=declare.OPERATOR)


async def _tenant(request: web.Request) -> tenants_pb2.Tenant:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = await ctx.backends.call(
        ctx.backends.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=request.match_info["tenant_id"])
    )
    return tenant


@admin.declare(
    "GET",
    "/admin/tenants/{tenant_id}/transfers",
    summary="Any tenant's transfers, sent or received, newest first (as the tenant reads them).",
    query=TransferQuery,
    answers={200: TransferList},
)
async def list_transfers(request: web.Request, query: TransferQuery) -> web.Response:
    ctx = ctx_of(request)
    tenant = await _tenant(request)
    resp: transfers_pb2.ListTransfersResponse = await ctx.backends.call(
        ctx.backends.transfers.ListTransfers,
        transfers_pb2.ListTransfersRequest(
            tenant_id=tenant.tenant_id,
            status=query.status or "",
            role=query.role or "",
            starting_after=query.starting_after or "",
            limit=query.limit,
        ),
    )
    return json_response({"data": [transfers_api.transfer_json(t) for t in resp.transfers], "has_more": resp.has_more})


@admin.declare(
    "GET",
    "/admin/tenants/{tenant_id}/transfers/{transfer_id}",
    summary="One transfer of a tenant, with its history.",
    answers={200: TransferDetail},
    errors=(404,),
)
async def get_transfer(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant = await _tenant(request)
    answer: transfers_pb2.TransferAnswer = await ctx.backends.call(
        ctx.backends.transfers.GetTransfer,
        transfers_pb2.TransferRef(tenant=tenant, transfer_id=request.match_info["transfer_id"]),
    )
    return json_response(transfers_api.transfer_json(answer.transfer, history=True))


@admin.declare(
    "POST",
    "/admin/tenants/{tenant_id}/transfers/{transfer_id}/cancel",
    summary="Cancel a transfer not yet claimed on behalf of its source tenant: amount and fee go back.",
    answers={200: TransferAnswer},
    errors=(403, 404, 409, 410),
)
async def cancel(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant = await _tenant(request)
    answer: transfers_pb2.TransferAnswer = await ctx.backends.call(
        ctx.backends.transfers.Cancel,
        transfers_pb2.TransferRef(tenant=tenant, transfer_id=request.match_info["transfer_id"]),
        timeout_s=2 * ctx.settings.rpc_timeout_s,
    )
    return json_response({**transfers_api.transfer_json(answer.transfer), "duplicate": answer.duplicate})
