"""The admin API's own operators: create (the credential is shown once), list, revoke.

Only the admin role reaches these routes (`operators.PERMISSIONS`); the tenants service validates
and stores, and records who asked (`created_by`, `revoked_by`) from the operator id the call carries.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from invo.v1 import tenants_pb2, tenants_pb2_grpc

from services.gateway import answers, declare, fields, operators, operators_schema, tenants_api
from services.gateway.context import ctx_of
from services.gateway.http import json_response
from services.gateway.operators_schema import CreateOperator, OperatorsQuery

# Validated by their declarations (operators_schema.py), which also document them.
routes = declare.Table(security=declare.OPERATOR)


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


@routes.adopt(operators_schema.CREATE)
async def create_operator(request: web.Request, body: CreateOperator) -> web.Response:
    ctx = ctx_of(request)
    req = tenants_pb2.CreateOperatorRequest(name=body.name, email=body.email, role=body.role)
    created: tenants_pb2.CreatedOperator = await ctx.backends.call(_stub(request).CreateOperator, req)
    operators.cache_of(request).credentials.forget_misses()  # the new credential was never refused
    # The credential is in this answer only: the tenants service keeps nothing but its hash.
    return json_response({**operator_json(created.operator), "credential": created.credential}, status=201)


@routes.adopt(operators_schema.LIST)
async def list_operators(request: web.Request, query: OperatorsQuery) -> web.Response:
    ctx = ctx_of(request)
    req = tenants_pb2.ListOperatorsRequest(cursor=query.cursor or "", status=query.status or "")
    if query.limit is not None:
        req.limit = query.limit
    resp: tenants_pb2.ListOperatorsResponse = await ctx.backends.call(_stub(request).ListOperators, req)
    return json_response(
        {
            "data": [operator_json(o) for o in resp.operators],
            "has_more": bool(resp.next_cursor),
            "next_cursor": resp.next_cursor or None,
        }
    )


@routes.adopt(operators_schema.REVOKE)
async def revoke_operator(request: web.Request, body: fields.Empty) -> web.Response:
    ctx = ctx_of(request)
    operator_id = request.match_info["operator_id"]
    revoked: tenants_pb2.Operator = await ctx.backends.call(
        _stub(request).RevokeOperator, tenants_pb2.RevokeOperatorRequest(operator_id=operator_id)
    )
    # At once on this gateway; other replicas within INVO_AUTH_CACHE_TTL_S.
    operators.cache_of(request).forget(operator_id)
    return json_response(operator_json(revoked))


class Me(answers.Answer):
    """The operator whose credential made the call, and what its role may do."""

    operator_id: str
    role: str


@routes.declare("GET", "/admin/me", summary="The calling operator: its id and role.", answers={200: Me})
async def me(request: web.Request) -> web.Response:
    return json_response({"operator_id": request["operator_id"], "role": request["operator_role"]})
