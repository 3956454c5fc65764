"""SubscriptionsService over gRPC: it translates protobuf to the subscription modules and back.

- calendar.py: period ends in UTC, calendar months clamped to the month's last day;
- store.py: rows, pages, the lease, the clock (the system's, or the test clock);
- charges.py: a period's charge, one ledger item purchase keyed by (subscription, period);
- renewals.py: a charge's outcome (paid, past_due, cancelled), and the scheduler's round;
- requests.py: create, cancel, resume;
- messages.py: the answers and the events.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2_grpc, subscriptions_pb2, subscriptions_pb2_grpc, tenants_pb2_grpc

from services.common import errors, grpcutil, loops, metrics
from services.common.config import Settings
from services.common.grpcserver import GrpcService
from services.subscriptions import messages, renewals, requests
from services.subscriptions.charges import Charger
from services.subscriptions.deps import Deps
from services.subscriptions.store import PUBLIC_STATUSES, Clock, SubscriptionStore

log = logging.getLogger("invo.subscriptions")


class SubscriptionsServicer(subscriptions_pb2_grpc.SubscriptionsServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def _answer(self, row: asyncpg.Record, *, duplicate: bool = False) -> subscriptions_pb2.SubscriptionAnswer:
        charge = (await self.d.store.last_charges([row["subscription_id"]])).get(row["subscription_id"])
        return subscriptions_pb2.SubscriptionAnswer(
            subscription=messages.subscription_message(row, charge), duplicate=duplicate
        )

    async def CreateSubscription(self, request: subscriptions_pb2.CreateSubscriptionRequest, context: Any) -> Any:
        row, duplicate = await requests.create(self.d, request, deadline=grpcutil.deadline_of(context))
        return await self._answer(row, duplicate=duplicate)

    async def GetSubscription(self, request: subscriptions_pb2.SubscriptionLookup, context: Any) -> Any:
        return await self._answer(await self.d.store.visible(request.subscription_id, request.tenant_id))

    async def ListSubscriptions(self, request: subscriptions_pb2.ListSubscriptionsRequest, context: Any) -> Any:
        if request.status and request.status not in PUBLIC_STATUSES:
            raise errors.InvalidRequest(
                f"status must be one of {', '.join(PUBLIC_STATUSES)}.",
                error_code="INVALID_PARAMETER",
                extra={"param": "status"},
            )
        if not request.tenant_id:
            raise errors.InvalidRequest("a tenant_id is required")
        rows, has_more = await self.d.store.page(
            tenant_id=request.tenant_id,
            player_email=request.player_email,
            status=request.status,
            starting_after=request.starting_after,
            limit=request.limit or 20,
        )
        charges = await self.d.store.last_charges([r["subscription_id"] for r in rows])
        return subscriptions_pb2.ListSubscriptionsResponse(
            subscriptions=[messages.subscription_message(r, charges.get(r["subscription_id"])) for r in rows],
            has_more=has_more,
        )

    async def CancelSubscription(self, request: subscriptions_pb2.CancelSubscriptionRequest, context: Any) -> Any:
        row, duplicate = await requests.cancel(
            self.d,
            request.tenant_id,
            request.subscription_id,
            at_once=request.at_once,
            prorate=request.prorate,
            deadline=grpcutil.deadline_of(context),
        )
        return await self._answer(row, duplicate=duplicate)

    async def ResumeSubscription(self, request: subscriptions_pb2.SubscriptionLookup, context: Any) -> Any:
        row, duplicate = await requests.resume(
            self.d, request.tenant_id, request.subscription_id, deadline=grpcutil.deadline_of(context)
        )
        return await self._answer(row, duplicate=duplicate)

    async def RenewDue(self, request: subscriptions_pb2.RenewDueRequest, context: Any) -> Any:
        out = counted(await renewals.renew_due(self.d))
        return subscriptions_pb2.RenewDueResponse(
            renewed=out.renewed, past_due=out.past_due, cancelled=out.cancelled, deferred=out.deferred
        )

    async def SetTestClock(self, request: subscriptions_pb2.SetTestClockRequest, context: Any) -> Any:
        await self.d.clock.set(request.now.ToDatetime(tzinfo=datetime.UTC))
        return subscriptions_pb2.SetTestClockResponse()


def counted(out: renewals.Round) -> renewals.Round:
    """`out`, its outcomes added to the renewals counter."""
    for outcome in ("renewed", "past_due", "cancelled", "deferred"):
        if n := getattr(out, outcome):
            metrics.SUBSCRIPTION_RENEWALS.labels(outcome).inc(n)
    return out


async def measure_due(deps: Deps) -> None:
    """The due gauges, by the service's clock: two reads of the partial index `subscriptions_due`."""
    now = await deps.clock.now()
    row = await deps.pool.fetchrow(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM subscriptions WHERE next_attempt_at <= $1 LIMIT $2) AS d) AS due,"
        " (SELECT min(next_attempt_at) FROM subscriptions WHERE next_attempt_at <= $1) AS oldest",
        now,
        metrics.DUE_COUNT_MAX,
    )
    metrics.SUBSCRIPTION_RENEWALS_DUE.set(row["due"])
    oldest = row["oldest"]
    metrics.SUBSCRIPTION_RENEWAL_OVERDUE.set(0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()))


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    ledger_channel = grpcutil.channel(settings.ledger_addr)
    svc.on_shutdown(ledger_channel.close)
    tenants_channel = grpcutil.channel(settings.tenants_addr)
    svc.on_shutdown(tenants_channel.close)
    # A holder's lease outlasts its two calls (tenants, ledger) with a margin.
    lease_s = settings.rpc_timeout_s * 2 + 5
    deps = Deps(
        pool=pool,
        store=SubscriptionStore(pool, lease_s=lease_s),
        clock=Clock(pool, test=settings.subscriptions_test_clock == "on"),
        charger=Charger(
            ledger_pb2_grpc.LedgerServiceStub(ledger_channel),
            tenants_pb2_grpc.TenantsServiceStub(tenants_channel),
            timeout_cap_s=settings.rpc_timeout_s,
        ),
        retry_schedule_s=settings.subscription_retry_schedule(),
        lease_s=lease_s,
    )

    async def renewal_round() -> float | None:
        out = counted(await renewals.renew_due(deps))
        return 0.0 if out.busy else None

    svc.background(
        loops.supervised(
            "subscription-renewals", renewal_round, interval_s=settings.subscription_renewal_interval_s, log=log
        ),
        "subscription-renewals",
    )
    svc.background(
        metrics.refresh_forever("subscriptions", lambda: measure_due(deps), interval_s=settings.metrics_refresh_s),
        "metrics-subscriptions",
    )
    svc.add(
        subscriptions_pb2_grpc.add_SubscriptionsServiceServicer_to_server,
        SubscriptionsServicer(deps),
        subscriptions_pb2.DESCRIPTOR.services_by_name["SubscriptionsService"].full_name,
    )
