"""Operators' view of transfers: any tenant's, read as that tenant reads them, and cancelled on its
behalf (the source tenant's right: the held amount and fee go back to the sender at once).

The routes call the transfers service's own RPCs with the tenant the path names, so an operator
sees exactly what the tenant's API answers and cancels under the same rules (only a transfer not
yet claimed, only as its source: 403 otherwise)."""

from __future__ import annotations

from aiohttp import web
from invo.v1 import tenants_pb2

from services.gateway import declare, transfers_api
from services.gateway.context import ctx_of
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
    return await transfers_api.list_as(request, (await _tenant(request)).tenant_id, query)


@admin.declare(
    "GET",
    "/admin/tenants/{tenant_id}/transfers/{transfer_id}",
    summary="One transfer of a tenant, with its history.",
    answers={200: TransferDetail},
    errors=(404,),
)
async def get_transfer(request: web.Request) -> web.Response:
    return await transfers_api.show_as(request, await _tenant(request))


@admin.declare(
    "POST",
    "/admin/tenants/{tenant_id}/transfers/{transfer_id}/cancel",
    summary="Cancel a transfer not yet claimed on behalf of its source tenant: amount and fee go back.",
    answers={200: TransferAnswer},
    errors=(403, 404, 409, 410),
)
async def cancel(request: web.Request) -> web.Response:
    return await transfers_api.cancel_as(request, await _tenant(request))
