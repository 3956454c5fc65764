"""Webhook deliveries for partners (their own) and operators (any tenant's): list, show, redeliver,
redeliver what failed since a time, send a test event, rotate the signing secret."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from invo.v1 import tenants_pb2, webhooks_pb2
from pydantic import AfterValidator, Field

from services.common import errors, limits
from services.gateway import answers, declare, fields
from services.gateway.context import ctx_of
from services.gateway.fields import IsoTime, Query, Request
from services.gateway.http import json_response
from services.gateway.tenants_api import iso

public = declare.Table(security=declare.SDK_KEY)
admin = declare.Table(security=declare.OPERATOR)

STATUSES = ("pending", "delivered", "failed")


def _status(value: str) -> str:
    if value and value not in STATUSES:
        raise fields.refuse("INVALID_PARAMETER", "status must be pending, delivered or failed.")
    return value


class DeliveriesQuery(Query):
    # Longer values are cut, as they always were: no id or event type is that long.
    event_type: Annotated[str, AfterValidator(lambda v: v[: limits.EVENT_TYPE_LEN_MAX])] = Field(
        default="", json_schema_extra={"maxLength": limits.EVENT_TYPE_LEN_MAX, "pattern": fields.NO_NUL}
    )
    status: Annotated[str, AfterValidator(_status)] = Field(default="", json_schema_extra={"enum": list(STATUSES)})
    since: IsoTime | None = None
    until: IsoTime | None = None
    cursor: Annotated[str, AfterValidator(lambda v: v[: limits.ID_LEN_MAX])] = Field(
        default="", description="next_cursor of the page before.", json_schema_extra={"maxLength": limits.ID_LEN_MAX}
    )
    limit: Annotated[int, fields.query_int(1, limits.DELIVERIES_LIMIT_MAX)] = 20


class AdminDeliveriesQuery(DeliveriesQuery):
    tenant_id: Annotated[str, Field(max_length=limits.ID_LEN_MAX)] = Field(
        default="", description="One tenant's deliveries; every tenant's without it."
    )
    order_id: Annotated[str, Field(pattern=r"^(ord_[0-9A-Z]{26})?$")] = Field(
        default="", description="Only the deliveries of this order's events."
    )


class RedeliverFailed(Request):
    since: IsoTime


class AdminRedeliverFailed(RedeliverFailed):
    tenant_id: Annotated[str, Field(max_length=limits.ID_LEN_MAX)] | None = Field(
        default=None, description="One tenant's failed deliveries; every tenant's without it."
    )


class RotateSecret(Request):
    overlap_seconds: Annotated[int, Field(ge=0, le=limits.ROTATION_OVERLAP_S_MAX)] | None = Field(
        default=None, description="How long the old secret keeps signing too."
    )


def delivery_json(d: webhooks_pb2.Delivery) -> dict[str, Any]:
    out: dict[str, Any] = {
        "delivery_id": d.delivery_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "tenant_id": d.tenant_id,
        "url": d.url,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": iso(d.next_attempt_at) if d.HasField("next_attempt_at") else None,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at) if d.HasField("delivered_at") else None,
    }
    if d.attempt_log:
        out["attempt_log"] = [
            {
                "attempt": a.attempt,
                "at": iso(a.at),
                "status_code": a.status_code or None,
                "latency_ms": a.latency_ms,
                "response_body": a.response_body,
                "error": a.error or None,
            }
            for a in d.attempt_log
        ]
    return out


async def _list(request: web.Request, tenant_id: str, q: DeliveriesQuery, *, all_tenants: bool = False) -> web.Response:
    ctx = ctx_of(request)
    req = webhooks_pb2.ListDeliveriesRequest(
        tenant_id=tenant_id,
        all_tenants=all_tenants,
        event_type=q.event_type,
        status=q.status,
        after_delivery_id=q.cursor,
        limit=q.limit,
        order_id=getattr(q, "order_id", ""),
    )
    if q.since is not None:
        req.since.CopyFrom(fields.timestamp(q.since))
    if q.until is not None:
        req.until.CopyFrom(fields.timestamp(q.until))
    resp = await ctx.backends.call(ctx.backends.webhooks.ListDeliveries, req)
    data = [delivery_json(d) for d in resp.deliveries]
    return json_response(
        {"data": data, "has_more": resp.has_more, "next_cursor": data[-1]["delivery_id"] if data else None}
    )


async def _get(
    request: web.Request, tenant_id: str, *, all_tenants: bool = False, redeliver: bool = False
) -> web.Response:
    ctx = ctx_of(request)
    req = webhooks_pb2.GetDeliveryRequest(
        tenant_id=tenant_id, all_tenants=all_tenants, delivery_id=request.match_info["delivery_id"][:64]
    )
    method = ctx.backends.webhooks.Redeliver if redeliver else ctx.backends.webhooks.GetDelivery
    return json_response(delivery_json(await ctx.backends.call(method, req)))


async def _redeliver_failed(
    request: web.Request, tenant_id: str, body: RedeliverFailed, *, all_tenants: bool = False
) -> web.Response:
    ctx = ctx_of(request)
    resp = await ctx.backends.call(
        ctx.backends.webhooks.RedeliverFailed,
        webhooks_pb2.RedeliverFailedRequest(
            tenant_id=tenant_id, all_tenants=all_tenants, since=fields.timestamp(body.since)
        ),
    )
    return json_response({"redelivered": resp.redelivered})


async def _rotate(request: web.Request, tenant_id: str, body: RotateSecret) -> web.Response:
    ctx = ctx_of(request)
    req = tenants_pb2.RotateWebhookSecretRequest(tenant_id=tenant_id)
    if body.overlap_seconds is not None:
        req.overlap_seconds = body.overlap_seconds
    resp = await ctx.backends.call(ctx.backends.tenants.RotateWebhookSecret, req)
    return json_response(
        {
            "webhook_signing_secret": resp.webhook_signing_secret,
            "previous_expires_at": iso(resp.previous_expires_at) if resp.HasField("previous_expires_at") else None,
        },
        status=201,
    )


def _tenant_id(request: web.Request) -> str:
    tenant: tenants_pb2.Tenant = request["tenant"]
    return tenant.tenant_id


_ONE = {200: answers.Delivery}


@public.declare(
    "GET",
    "/api/webhooks/deliveries",
    summary="Your webhook deliveries, newest first.",
    query=DeliveriesQuery,
    answers={200: answers.DeliveryPage},
)
async def list_deliveries(request: web.Request, query: DeliveriesQuery) -> web.Response:
    return await _list(request, _tenant_id(request), query)


@public.declare(
    "GET",
    "/api/webhooks/deliveries/{delivery_id}",
    summary="One delivery with every attempt.",
    answers=_ONE,
)
async def get_delivery(request: web.Request) -> web.Response:
    return await _get(request, _tenant_id(request))


@public.declare(
    "POST",
    "/api/webhooks/deliveries/{delivery_id}/redeliver",
    summary="Send one delivery again.",
    answers=_ONE,
    errors=(409,),
)
async def redeliver(request: web.Request) -> web.Response:
    return await _get(request, _tenant_id(request), redeliver=True)


@public.declare(
    "POST",
    "/api/webhooks/redeliver-failed",
    summary="Send again every delivery that failed since a time.",
    body=RedeliverFailed,
    answers={200: answers.Redelivered},
)
async def redeliver_failed(request: web.Request, body: RedeliverFailed) -> web.Response:
    return await _redeliver_failed(request, _tenant_id(request), body)


@public.declare(
    "POST", "/api/webhooks/test", summary="Send a webhook.test event.", answers={201: answers.Delivery}, errors=(409,)
)
async def send_test(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    d = await ctx.backends.call(
        ctx.backends.webhooks.SendTestEvent, webhooks_pb2.SendTestEventRequest(tenant_id=_tenant_id(request))
    )
    return json_response(delivery_json(d), status=201)


@public.declare(
    "POST",
    "/api/webhooks/rotate-secret",
    summary="A new signing secret (shown once); the old one keeps signing for overlap_seconds.",
    body=RotateSecret,
    body_required=False,
    answers={201: answers.RotatedSecret},
)
async def rotate_secret(request: web.Request, body: RotateSecret) -> web.Response:
    return await _rotate(request, _tenant_id(request), body)


@admin.declare(
    "GET",
    "/admin/webhooks/deliveries",
    summary="Any tenant's webhook deliveries, newest first.",
    query=AdminDeliveriesQuery,
    answers={200: answers.DeliveryPage},
)
async def admin_list(request: web.Request, query: AdminDeliveriesQuery) -> web.Response:
    # No tenant named: the operator lists every tenant's, and says so explicitly.
    return await _list(request, query.tenant_id, query, all_tenants=not query.tenant_id)


@admin.declare(
    "GET", "/admin/webhooks/deliveries/{delivery_id}", summary="One delivery with every attempt.", answers=_ONE
)
async def admin_get(request: web.Request) -> web.Response:
    return await _get(request, "", all_tenants=True)


@admin.declare(
    "POST",
    "/admin/webhooks/deliveries/{delivery_id}/redeliver",
    summary="Send one delivery again.",
    answers=_ONE,
    errors=(409,),
)
async def admin_redeliver(request: web.Request) -> web.Response:
    return await _get(request, "", all_tenants=True, redeliver=True)


@admin.declare(
    "POST",
    "/admin/webhooks/redeliver-failed",
    summary="Send again every delivery that failed since a time (one tenant's, or every tenant's).",
    body=AdminRedeliverFailed,
    answers={200: answers.Redelivered},
)
async def admin_redeliver_failed(request: web.Request, body: AdminRedeliverFailed) -> web.Response:
    tenant_id = body.tenant_id or ""
    return await _redeliver_failed(request, tenant_id, body, all_tenants=not tenant_id)


@admin.declare(
    "POST",
    "/admin/tenants/{tenant_id}/webhook-secret/rotate",
    summary="A new webhook signing secret for a tenant (shown once).",
    body=RotateSecret,
    body_required=False,
    answers={201: answers.RotatedSecret},
)
async def admin_rotate(request: web.Request, body: RotateSecret) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    if not tenant_id.startswith("tn_"):
        raise errors.NotFound("No such tenant.", error_code="TENANT_NOT_FOUND")
    return await _rotate(request, tenant_id, body)
