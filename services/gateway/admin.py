"""The admin API under /admin/*: tenants and their SDK keys. Opened by an operator's bearer
credential (`surfaces.operator_auth`), never an SDK key."""

from __future__ import annotations

from aiohttp import web
from invo.v1 import tenants_pb2

from services.gateway import operators, tenants_api
from services.gateway.context import GatewayContext, ctx_of
from services.gateway.http import get_int, json_response, read_json, read_optional_json, reject_unknown

routes = web.RouteTableDef()


@routes.post("/admin/tenants")
async def create_tenant(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    req = tenants_api.parse_create(await read_json(request))
    resp: tenants_pb2.CreateTenantResponse = await ctx.backends.call(ctx.backends.tenants.CreateTenant, req)
    return json_response(
        {
            "tenant_id": resp.tenant.tenant_id,
            "sdk_key": resp.key.sdk_key,
            "sdk_key_id": resp.key.key.key_id,
            "webhook_signing_secret": resp.webhook_signing_secret,
            "tenant": ctx.tenant_json(resp.tenant),
        },
        status=201,
    )


@routes.get("/admin/tenants/{tenant_id}")
async def get_tenant(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    t = await ctx.backends.call(
        ctx.backends.tenants.GetTenant,
        tenants_pb2.GetTenantRequest(tenant_id=request.match_info["tenant_id"]),
    )
    return json_response(ctx.tenant_json(t))


@routes.patch("/admin/tenants/{tenant_id}")
async def update_tenant(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    tenant_id = request.match_info["tenant_id"]
    settings = tenants_api.parse_settings(await read_json(request), allowed=tenants_api.UPDATE_FIELDS)
    t = await ctx.backends.call(
        ctx.backends.tenants.UpdateTenant,
        tenants_pb2.UpdateTenantRequest(tenant_id=tenant_id, settings=settings),
    )
    ctx.keys.forget_tenant(tenant_id)
    return json_response(ctx.tenant_json(t))


@routes.get("/admin/tenants/{tenant_id}/keys")
async def list_keys(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    resp = await ctx.backends.call(
        ctx.backends.tenants.ListKeys, tenants_pb2.ListKeysRequest(tenant_id=request.match_info["tenant_id"])
    )
    return json_response({"data": [tenants_api.key_json(k) for k in resp.keys]})


@routes.post("/admin/tenants/{tenant_id}/keys")
async def issue_key(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    reject_unknown(await read_optional_json(request), set())
    issued = await ctx.backends.call(
        ctx.backends.tenants.IssueKey, tenants_pb2.IssueKeyRequest(tenant_id=request.match_info["tenant_id"])
    )
    return json_response(tenants_api.issued_key_json(issued), status=201)


@routes.post("/admin/tenants/{tenant_id}/keys/{key_id}/rotate")
async def rotate_key(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await read_optional_json(request)
    reject_unknown(body, {"overlap_seconds"})
    req = tenants_pb2.RotateKeyRequest(tenant_id=request.match_info["tenant_id"], key_id=request.match_info["key_id"])
    overlap = get_int(body, "overlap_seconds", lo=0, hi=30 * 86400)
    if overlap is not None:
        req.overlap_seconds = overlap
    resp = await ctx.backends.call(ctx.backends.tenants.RotateKey, req)
    ctx.keys.forget_tenant(req.tenant_id)
    return json_response(
        {"new_key": tenants_api.issued_key_json(resp.new_key), "old_key": tenants_api.key_json(resp.old_key)},
        status=201,
    )


@routes.post("/admin/tenants/{tenant_id}/keys/{key_id}/revoke")
async def revoke_key(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    reject_unknown(await read_optional_json(request), set())
    tenant_id = request.match_info["tenant_id"]
    key = await ctx.backends.call(
        ctx.backends.tenants.RevokeKey,
        tenants_pb2.RevokeKeyRequest(tenant_id=tenant_id, key_id=request.match_info["key_id"]),
    )
    ctx.keys.forget_tenant(tenant_id)
    return json_response(tenants_api.key_json(key))


async def check_admin(ctx: GatewayContext, request: web.Request) -> operators.Operator:
    """The request's operator (the bootstrap token or a named operator's credential), allowed by its
    role to call the matched route: 401 or 403 otherwise (`services/gateway/operators.py`)."""
    operator = await operators.authenticate(ctx, request)
    operators.authorize(request, operator)
    return operator
