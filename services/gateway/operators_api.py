"""The admin API's own operators: create (the credential is shown once), list, revoke.

Only the admin role reaches these routes (`operators.PERMISSIONS`); the tenants service validates
and stores, and records who asked (`created_by`, `revoked_by`) from the operator id the call carries.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from services.gateway import operators, tenants_api
from services.gateway.context import ctx_of
from services.gateway.http import get_str, invalid, json_response, read_json, read_optional_json, reject_unknown

routes = web.RouteTableDef()

LIST_LIMIT_MAX = 500
_LIST_QUERY = {"cursor", "limit", "status"}


def operator_json(o: tenants_pb2.Operator) -> dict[str, Any]:
    return {
        "operator_id": o.operator_id,
        "name": o.name,
        "email": o.email,
        "role": o.role,
        "status": o.status,
        "credential_prefix": o.credential_prefix,
        "created_by": o.created_by,
        "created_at": tenants_api.iso(o.created_at),
        "revoked_by": o.revoked_by or None,
        "revoked_at": tenants_api.iso(o.revoked_at) if o.HasField("revoked_at") else None,
    }


def _stub(request: web.Request) -> tenants_pb2_grpc.OperatorsServiceStub:
    return operators.cache_of(request).stub


@routes.post("/admin/operators")
async def create_operator(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await read_json(request)
    reject_unknown(body, {"name", "email", "role"})
    req = tenants_pb2.CreateOperatorRequest(
        name=get_str(body, "name", max_len=200, required=True) or "",
        email=get_str(body, "email", max_len=254, required=True) or "",
        role=get_str(body, "role", max_len=16, required=True) or "",
    )
    if req.role not in operators.ROLES:
        raise invalid("role", f"role must be one of {', '.join(operators.ROLES)}.")
    created: tenants_pb2.CreatedOperator = await ctx.backends.call(_stub(request).CreateOperator, req)
    # The credential is in this answer only: the tenants service keeps nothing but its hash.
    return json_response({**operator_json(created.operator), "credential": created.credential}, status=201)


@routes.get("/admin/operators")
async def list_operators(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    unknown = sorted(set(request.query) - _LIST_QUERY)
    if unknown:
        reject_unknown(dict.fromkeys(unknown), set())
    req = tenants_pb2.ListOperatorsRequest(
        cursor=request.query.get("cursor", ""), status=request.query.get("status", "")
    )
    limit = request.query.get("limit")
    if limit is not None:
        if not limit.isdigit() or not 1 <= int(limit) <= LIST_LIMIT_MAX:
            raise invalid("limit", f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}.")
        req.limit = int(limit)
    resp: tenants_pb2.ListOperatorsResponse = await ctx.backends.call(_stub(request).ListOperators, req)
    return json_response(
        {
            "data": [operator_json(o) for o in resp.operators],
            "has_more": bool(resp.next_cursor),
            "next_cursor": resp.next_cursor or None,
        }
    )


@routes.post("/admin/operators/{operator_id}/revoke")
async def revoke_operator(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    reject_unknown(await read_optional_json(request), set())
    operator_id = request.match_info["operator_id"]
    revoked: tenants_pb2.Operator = await ctx.backends.call(
        _stub(request).RevokeOperator, tenants_pb2.RevokeOperatorRequest(operator_id=operator_id)
    )
    # At once on this gateway; other replicas within INVO_AUTH_CACHE_TTL_S.
    operators.cache_of(request).forget(operator_id)
    return json_response(operator_json(revoked))
