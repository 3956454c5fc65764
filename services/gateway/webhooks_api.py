"""Webhook deliveries for partners (their own) and operators (any tenant's): list, show, redeliver,
redeliver what failed since a time, send a test event, rotate the signing secret."""

from __future__ import annotations

import datetime
from typing import Any

from aiohttp import web
from google.protobuf import timestamp_pb2
from invo.v1 import tenants_pb2, webhooks_pb2

from services.common import errors
from services.gateway.context import ctx_of
from services.gateway.http import (
    get_int,
    get_str,
    invalid,
    json_response,
    read_json,
    read_optional_json,
    reject_unknown,
)
from services.gateway.tenants_api import iso

public = web.RouteTableDef()
admin = web.RouteTableDef()


def _time(value: str, field: str) -> timestamp_pb2.Timestamp:
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid(field, f"{field} must be an ISO 8601 time such as 2026-01-31T12:00:00Z.") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    ts = timestamp_pb2.Timestamp()
    try:
        ts.FromDatetime(parsed)
    except (ValueError, OverflowError) as exc:
        raise invalid(field, f"{field} is out of range.") from exc
    return ts


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


async def _list(request: web.Request, tenant_id: str, *, all_tenants: bool = False) -> web.Response:
    ctx = ctx_of(request)
    q = request.query
    req = webhooks_pb2.ListDeliveriesRequest(
        tenant_id=tenant_id,
        all_tenants=all_tenants,
        event_type=q.get("event_type", "")[:100],
        status=q.get("status", ""),
        after_delivery_id=q.get("cursor", "")[:64],
    )
    limit = q.get("limit", "20")
    if not limit.isascii() or not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise invalid("limit", "limit must be a whole number from 1 to 100.")
    req.limit = int(limit)
    if req.status and req.status not in ("pending", "delivered", "failed"):
        raise invalid("status", "status must be pending, delivered or failed.")
    if "since" in q:
        req.since.CopyFrom(_time(q["since"], "since"))
    if "until" in q:
        req.until.CopyFrom(_time(q["until"], "until"))
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
    request: web.Request, tenant_id: str, body: dict[str, Any], *, all_tenants: bool = False
) -> web.Response:
    ctx = ctx_of(request)
    since = get_str(body, "since", max_len=64, required=True) or ""
    resp = await ctx.backends.call(
        ctx.backends.webhooks.RedeliverFailed,
        webhooks_pb2.RedeliverFailedRequest(tenant_id=tenant_id, all_tenants=all_tenants, since=_time(since, "since")),
    )
    return json_response({"redelivered": resp.redelivered})


async def _rotate(request: web.Request, tenant_id: str) -> web.Response:
    ctx = ctx_of(request)
    body = await read_optional_json(request)
    reject_unknown(body, {"overlap_seconds"})
    req = tenants_pb2.RotateWebhookSecretRequest(tenant_id=tenant_id)
    overlap = get_int(body, "overlap_seconds", lo=0, hi=30 * 86400)
    if overlap is not None:
        req.overlap_seconds = overlap
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


@public.get("/api/webhooks/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    return await _list(request, _tenant_id(request))


@public.get("/api/webhooks/deliveries/{delivery_id}")
async def get_delivery(request: web.Request) -> web.Response:
    return await _get(request, _tenant_id(request))


@public.post("/api/webhooks/deliveries/{delivery_id}/redeliver")
async def redeliver(request: web.Request) -> web.Response:
    return await _get(request, _tenant_id(request), redeliver=True)


@public.post("/api/webhooks/redeliver-failed")
async def redeliver_failed(request: web.Request) -> web.Response:
    body = await read_json(request)
    reject_unknown(body, {"since"})
    return await _redeliver_failed(request, _tenant_id(request), body)


@public.post("/api/webhooks/test")
async def send_test(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    d = await ctx.backends.call(
        ctx.backends.webhooks.SendTestEvent, webhooks_pb2.SendTestEventRequest(tenant_id=_tenant_id(request))
    )
    return json_response(delivery_json(d), status=201)


@public.post("/api/webhooks/rotate-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    return await _rotate(request, _tenant_id(request))


def _admin_tenant(request: web.Request) -> str:
    tenant_id = request.query.get("tenant_id", "")
    if len(tenant_id) > 64:
        raise invalid("tenant_id", "tenant_id is not a tenant id.")
    return tenant_id


@admin.get("/admin/webhooks/deliveries")
async def admin_list(request: web.Request) -> web.Response:
    tenant_id = _admin_tenant(request)
    # No tenant named: the operator lists every tenant's, and says so explicitly.
    return await _list(request, tenant_id, all_tenants=not tenant_id)


@admin.get("/admin/webhooks/deliveries/{delivery_id}")
async def admin_get(request: web.Request) -> web.Response:
    return await _get(request, "", all_tenants=True)


@admin.post("/admin/webhooks/deliveries/{delivery_id}/redeliver")
async def admin_redeliver(request: web.Request) -> web.Response:
    return await _get(request, "", all_tenants=True, redeliver=True)


@admin.post("/admin/webhooks/redeliver-failed")
async def admin_redeliver_failed(request: web.Request) -> web.Response:
    body = await read_json(request)
    reject_unknown(body, {"since", "tenant_id"})
    tenant_id = get_str(body, "tenant_id", max_len=64) or ""
    return await _redeliver_failed(request, tenant_id, body, all_tenants=not tenant_id)


@admin.post("/admin/tenants/{tenant_id}/webhook-secret/rotate")
async def admin_rotate(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    if not tenant_id.startswith("tn_"):
        raise errors.NotFound("No such tenant.", error_code="TENANT_NOT_FOUND")
    return await _rotate(request, tenant_id)
