"""The admin API under /admin/*: tenants and their SDK keys. Opened by an operator's bearer
credential (`surfaces.operator_auth`), never an SDK key."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from invo.v1 import tenants_pb2
from pydantic import Field

from services.common import errors, limits
from services.gateway import answers, declare, tenants_api
from services.gateway.context import ctx_of
from services.gateway.fields import Empty, Request
from services.gateway.http import json_response

routes = declare.Table(security=declare.OPERATOR)


class CreatedTenant(answers.Answer):
    """The new tenant with its first SDK key and webhook signing secret: shown this once, never again."""

    tenant_id: str
    sdk_key: str
    sdk_key_id: str
    webhook_signing_secret: str
    tenant: answers.Tenant


class KeyList(answers.Answer):
    """The tenant's keys, by prefix only."""

    data: list[answers.Key]


class RotateKey(Request):
    overlap_seconds: Annotated[int, Field(ge=0, le=limits.ROTATION_OVERLAP_S_MAX)] | None = Field(
        default=None, description="How long the old key keeps working (default INVO_KEY_ROTATION_OVERLAP_S)."
    )


class RotatedKey(answers.Answer):
    """The new key (shown once) and the old one, which expires after the overlap."""

    new_key: answers.IssuedKey
    old_key: answers.Key


def _check_webhook_url(url: str | None, environment: str) -> None:
    problem = limits.webhook_url_problem(url or "", environment=environment)
    if problem:
        raise errors.InvalidRequest(problem, error_code="INVALID_PARAMETER", extra={"param": "webhook_url"})


@routes.declare(
    "POST",
    "/admin/tenants",
    summary="Create a tenant with its first SDK key and webhook signing secret.",
    body=tenants_api.CreateTenant,
    answers={201: CreatedTenant},
)
async def create_tenant(request: web.Request, body: tenants_api.CreateTenant) -> web.Response:
    ctx = ctx_of(request)
    _check_webhook_url(body.webhook_url, body.environment)
    req = tenants_pb2.CreateTenantRequest(environment=body.environment, settings=tenants_api.settings_message(body))
    resp: tenants_pb2.CreateTenantResponse = await ctx.backends.call(ctx.backends.tenants.CreateTenant, req)
    ctx.keys.forget_misses()  # a new key is never one refused before; this makes it certain here
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


@routes.declare("GET", "/admin/tenants/{tenant_id}", summary="A tenant's configuration.", answers={200: answers.Tenant})
async def get_tenant(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    t = await ctx.backends.call(
        ctx.backends.tenants.GetTenant,
        tenants_pb2.GetTenantRequest(tenant_id=request.match_info["tenant_id"]),
    )
    return json_response(ctx.tenant_json(t))


@routes.declare(
    "PATCH",
    "/admin/tenants/{tenant_id}",
    summary="Change a tenant's settings or status; a field left out stays as it is.",
    body=tenants_api.UpdateTenant,
    answers={200: answers.Tenant},
)
async def update_tenant(request: web.Request, body: tenants_api.UpdateTenant) -> web.Response:
    ctx = ctx_of(request)
    tenant_id = request.match_info["tenant_id"]
    if body.webhook_url:
        # Whether http is allowed depends on the tenant's environment.
        current: tenants_pb2.Tenant = await ctx.backends.call(
            ctx.backends.tenants.GetTenant, tenants_pb2.GetTenantRequest(tenant_id=tenant_id)
        )
        _check_webhook_url(body.webhook_url, current.environment)
    t = await ctx.backends.call(
        ctx.backends.tenants.UpdateTenant,
        tenants_pb2.UpdateTenantRequest(tenant_id=tenant_id, settings=tenants_api.settings_message(body)),
    )
    ctx.keys.forget_tenant(tenant_id)
    return json_response(ctx.tenant_json(t))


@routes.declare(
    "GET", "/admin/tenants/{tenant_id}/keys", summary="The tenant's SDK keys (prefixes only).", answers={200: KeyList}
)
async def list_keys(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    resp = await ctx.backends.call(
        ctx.backends.tenants.ListKeys, tenants_pb2.ListKeysRequest(tenant_id=request.match_info["tenant_id"])
    )
    return json_response({"data": [tenants_api.key_json(k) for k in resp.keys]})


@routes.declare(
    "POST",
    "/admin/tenants/{tenant_id}/keys",
    summary="Issue another SDK key for the tenant.",
    body=Empty,
    body_required=False,
    answers={201: answers.IssuedKey},
    errors=(409,),
)
async def issue_key(request: web.Request, body: Empty) -> web.Response:
    ctx = ctx_of(request)
    issued = await ctx.backends.call(
        ctx.backends.tenants.IssueKey, tenants_pb2.IssueKeyRequest(tenant_id=request.match_info["tenant_id"])
    )
    ctx.keys.forget_misses()
    return json_response(tenants_api.issued_key_json(issued), status=201)


@routes.declare(
    "POST",
    "/admin/tenants/{tenant_id}/keys/{key_id}/rotate",
    summary="A new key; the old one keeps working for overlap_seconds.",
    body=RotateKey,
    body_required=False,
    answers={201: RotatedKey},
    errors=(409,),
)
async def rotate_key(request: web.Request, body: RotateKey) -> web.Response:
    ctx = ctx_of(request)
    req = tenants_pb2.RotateKeyRequest(tenant_id=request.match_info["tenant_id"], key_id=request.match_info["key_id"])
    if body.overlap_seconds is not None:
        req.overlap_seconds = body.overlap_seconds
    resp = await ctx.backends.call(ctx.backends.tenants.RotateKey, req)
    ctx.keys.forget_tenant(req.tenant_id)
    ctx.keys.forget_misses()
    return json_response(
        {"new_key": tenants_api.issued_key_json(resp.new_key), "old_key": tenants_api.key_json(resp.old_key)},
        status=201,
    )


@routes.declare(
    "POST",
    "/admin/tenants/{tenant_id}/keys/{key_id}/revoke",
    summary="Revoke a key at once.",
    body=Empty,
    body_required=False,
    answers={200: answers.Key},
)
async def revoke_key(request: web.Request, body: Empty) -> web.Response:
    ctx = ctx_of(request)
    tenant_id = request.match_info["tenant_id"]
    key = await ctx.backends.call(
        ctx.backends.tenants.RevokeKey,
        tenants_pb2.RevokeKeyRequest(tenant_id=tenant_id, key_id=request.match_info["key_id"]),
    )
    ctx.keys.forget_tenant(tenant_id)
    return json_response(tenants_api.key_json(key))
