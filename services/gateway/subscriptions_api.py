"""Currency subscriptions (issue 19): the partner creates, reads, cancels and resumes them
(`/api/subscriptions`); the subscriptions service charges each period and renews them. Bodies are
declared in `subscriptions_schema.py`."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from invo.v1 import subscriptions_pb2, tenants_pb2

from services.common import money
from services.gateway import declare, fields
from services.gateway.context import ctx_of
from services.gateway.http import json_response
from services.gateway.subscriptions_schema import (
    REFUSALS,
    CancelBody,
    SubscriptionAnswer,
    SubscriptionBody,
    SubscriptionList,
    SubscriptionOut,
    SubscriptionQuery,
)
from services.gateway.tenants_api import iso, iso_of

public = declare.Table(security=declare.SDK_KEY)


def subscription_json(s: subscriptions_pb2.Subscription) -> dict[str, Any]:
    c = s.last_charge
    return {
        "subscription_id": s.subscription_id,
        "player_email": s.player_email,
        "plan_id": s.plan_id,
        "plan_name": s.plan_name,
        "price": money.format_units(s.price_minor),
        "interval": s.interval,
        "interval_count": s.interval_count,
        "status": s.status,
        "current_period": {"start": iso(s.current_period_start), "end": iso(s.current_period_end)},
        "trial_end": iso_of(s, "trial_end"),
        "cancel_at_period_end": s.cancel_at_period_end,
        "cancellation_reason": s.cancellation_reason or None,
        "cancelled_at": iso_of(s, "cancelled_at"),
        "periods_paid": s.periods_paid,
        "failed_attempts": s.failed_attempts,
        "next_attempt_at": iso_of(s, "next_attempt_at"),
        "last_charge": {
            "period": c.period,
            "transaction_id": c.transaction_id,
            "total": money.format_units(c.total_minor),
            "partner_amount": money.format_units(c.partner_amount_minor),
            "network_fee": money.format_units(c.network_fee_minor),
            "new_balance": money.format_units(c.new_balance_minor),
            "period_start": iso(c.period_start),
            "period_end": iso(c.period_end),
            "charged_at": iso(c.charged_at),
        }
        if s.HasField("last_charge")
        else None,
        "refund": {
            "period": s.refund.period,
            "amount": money.format_units(s.refund.amount_minor),
            "partner_amount": money.format_units(s.refund.partner_minor),
            "network_fee": money.format_units(s.refund.fee_minor),
            "transaction_id": s.refund.transaction_id,
        }
        if s.HasField("refund")
        else None,
        "metadata": json.loads(s.metadata_json or "{}"),
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
    }


def _answer(answer: subscriptions_pb2.SubscriptionAnswer, *, created: bool = False) -> web.Response:
    out = subscription_json(answer.subscription)
    out["duplicate"] = answer.duplicate
    return json_response(out, status=201 if created and not answer.duplicate else 200)


def _timeout_s(request: web.Request) -> float:
    # A create may wait for a concurrent copy of itself; a cancel for a renewal in flight.
    return 3 * ctx_of(request).settings.rpc_timeout_s


def _lookup(request: web.Request) -> subscriptions_pb2.SubscriptionLookup:
    return subscriptions_pb2.SubscriptionLookup(
        tenant_id=request["tenant_id"], subscription_id=request.match_info["subscription_id"]
    )


@public.declare(
    "POST",
    "/api/subscriptions",
    summary="Subscribe a player to a plan paid from the wallet every period (the first period charged at once).",
    body=SubscriptionBody,
    answers={201: SubscriptionAnswer, 200: SubscriptionAnswer},
    errors=(402, 409),
    description=REFUSALS,
)
async def create_subscription(request: web.Request, body: SubscriptionBody) -> web.Response:
    ctx = ctx_of(request)
    tenant: tenants_pb2.Tenant = request["tenant"]
    answer: subscriptions_pb2.SubscriptionAnswer = await ctx.backends.call(
        ctx.backends.subscriptions.CreateSubscription,
        subscriptions_pb2.CreateSubscriptionRequest(
            tenant_id=tenant.tenant_id,
            environment=tenant.environment,
            player_email=body.player_email,
            plan_id=body.plan_id,
            plan_name=body.plan_name,
            price_minor=body.price,
            interval=body.interval,
            interval_count=body.interval_count or 1,
            trial_days=body.trial_days or 0,
            metadata_json=fields.metadata_json(body.metadata) or "{}",
            idempotency_key=body.idempotency_key,
            network_fee_bps=tenant.network_fee_bps,
            currency_name=tenant.currency_name,
        ),
        timeout_s=_timeout_s(request),
    )
    return _answer(answer, created=True)


@public.declare(
    "GET",
    "/api/subscriptions",
    summary="Your subscriptions (of one player, or in one status), newest first.",
    query=SubscriptionQuery,
    answers={200: SubscriptionList},
)
async def list_subscriptions(request: web.Request, query: SubscriptionQuery) -> web.Response:
    ctx = ctx_of(request)
    resp: subscriptions_pb2.ListSubscriptionsResponse = await ctx.backends.call(
        ctx.backends.subscriptions.ListSubscriptions,
        subscriptions_pb2.ListSubscriptionsRequest(
            tenant_id=request["tenant_id"],
            player_email=query.player_email or "",
            status=query.status or "",
            starting_after=query.starting_after or "",
            limit=query.limit,
        ),
    )
    return json_response({"data": [subscription_json(s) for s in resp.subscriptions], "has_more": resp.has_more})


@public.declare(
    "GET",
    "/api/subscriptions/{subscription_id}",
    summary="One of your subscriptions with its last charge.",
    answers={200: SubscriptionOut},
    errors=(404,),
)
async def get_subscription(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    answer = await ctx.backends.call(ctx.backends.subscriptions.GetSubscription, _lookup(request))
    return json_response(subscription_json(answer.subscription))


@public.declare(
    "POST",
    "/api/subscriptions/{subscription_id}/cancel",
    summary="Cancel at the end of the current period (by default), or at once (with prorate: unused time refunded).",
    body=CancelBody,
    body_required=False,
    answers={200: SubscriptionAnswer},
    errors=(404, 409),
)
async def cancel_subscription(request: web.Request, body: CancelBody) -> web.Response:
    ctx = ctx_of(request)
    answer = await ctx.backends.call(
        ctx.backends.subscriptions.CancelSubscription,
        subscriptions_pb2.CancelSubscriptionRequest(
            tenant_id=request["tenant_id"],
            subscription_id=request.match_info["subscription_id"],
            at_once=bool(body.at_once),
            prorate=bool(body.prorate),
        ),
        timeout_s=_timeout_s(request),
    )
    return _answer(answer)


@public.declare(
    "POST",
    "/api/subscriptions/{subscription_id}/resume",
    summary="Take back a cancel at the period's end, before the period ends.",
    answers={200: SubscriptionAnswer},
    errors=(404, 409),
)
async def resume_subscription(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    answer = await ctx.backends.call(
        ctx.backends.subscriptions.ResumeSubscription, _lookup(request), timeout_s=_timeout_s(request)
    )
    return _answer(answer)
