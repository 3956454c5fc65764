"""The webhooks service: every event on the stream reaches its tenant's endpoint, signed, at least once.

This module is the gRPC servicer (the delivery log: list, show, redeliver, send a test event) and
the start-up. The work is in its own modules: consumer.py records what the stream carries,
sender.py claims and POSTs due deliveries, outcomes.py records attempts in batches, addresses.py
keeps production deliveries out of our network, tenants.py reads tenants' URLs and secrets.
Every background loop runs supervised (services/common/loops.py): a database, NATS or tenants
service outage fails rounds, which are retried with backoff, and never ends the process.

Tenant scope fails closed: every request names its tenant, and an operator's request across
tenants says so with `all_tenants`; a request with neither is refused, never read as "every
tenant".
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import asyncpg
from invo.v1 import tenants_pb2_grpc, webhooks_pb2, webhooks_pb2_grpc

from services.common import errors, events, grpcutil, ids, logs, metrics
from services.common.config import Settings
from services.common.grpcserver import GrpcService
from services.webhooks.consumer import Consumer
from services.webhooks.sender import Sender
from services.webhooks.tenants import TenantCache

LIST_LIMIT_MAX = 100

_ts = grpcutil.timestamp

_DELIVERY_COLUMNS = (
    "delivery_id, event_id, tenant_id, event_type, url, status, attempts, next_attempt_at, created_at, delivered_at"
)

log = logging.getLogger("invo.webhooks")


def scope(tenant_id: str, *, all_tenants: bool) -> str:
    """The tenant a request is about ("" with `all_tenants`, an operator's request). Refused when
    it names none, or both a tenant and all of them."""
    if all_tenants:
        if tenant_id:
            raise errors.InvalidRequest("tenant_id and all_tenants exclude each other")
        return ""
    if not tenant_id:
        raise errors.InvalidRequest("tenant_id is required (all_tenants for every tenant)")
    return tenant_id


class Webhooks(webhooks_pb2_grpc.WebhooksServiceServicer):
    def __init__(self, pool: asyncpg.Pool, tenants: TenantCache, consumer: Consumer, wake: asyncio.Event) -> None:
        self.pool = pool
        self.tenants = tenants
        self.consumer = consumer  # a test event is recorded as if it had come from the stream
        self.wake = wake

    async def _message(self, row: asyncpg.Record, *, with_attempts: bool = False) -> webhooks_pb2.Delivery:
        msg = webhooks_pb2.Delivery(
            delivery_id=row["delivery_id"],
            event_id=row["event_id"],
            tenant_id=row["tenant_id"],
            event_type=row["event_type"],
            url=row["url"],
            status=row["status"],
            attempts=row["attempts"],
            next_attempt_at=_ts(row["next_attempt_at"]),
            created_at=_ts(row["created_at"]),
            delivered_at=_ts(row["delivered_at"]),
        )
        if with_attempts:
            attempts = await self.pool.fetch(
                "SELECT attempt, started_at, status_code, latency_ms, response_body, error FROM delivery_attempts"
                " WHERE delivery_id = $1 ORDER BY id LIMIT 100",
                row["delivery_id"],
            )
            msg.attempt_log.extend(
                webhooks_pb2.Attempt(
                    attempt=a["attempt"],
                    at=_ts(a["started_at"]),
                    status_code=a["status_code"] or 0,
                    latency_ms=a["latency_ms"],
                    response_body=a["response_body"],
                    error=a["error"],
                )
                for a in attempts
            )
        return msg

    async def _get(self, request: webhooks_pb2.GetDeliveryRequest) -> asyncpg.Record:
        tenant_id = scope(request.tenant_id, all_tenants=request.all_tenants)
        row = await self.pool.fetchrow(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = $1 AND ($3 OR tenant_id = $2)",
            request.delivery_id,
            tenant_id,
            request.all_tenants,
        )
        if row is None:
            raise errors.NotFound("No such delivery.", error_code="DELIVERY_NOT_FOUND")
        return row

    async def ListDeliveries(self, request: webhooks_pb2.ListDeliveriesRequest, context: Any) -> Any:
        tenant_id = scope(request.tenant_id, all_tenants=request.all_tenants)
        limit = request.limit or 20
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise errors.InvalidRequest(f"limit must be from 1 to {LIST_LIMIT_MAX}")
        if request.status and request.status not in ("pending", "delivered", "failed"):
            raise errors.InvalidRequest("status must be pending, delivered or failed")
        since = request.since.ToDatetime(tzinfo=datetime.UTC) if request.HasField("since") else None
        until = request.until.ToDatetime(tzinfo=datetime.UTC) if request.HasField("until") else None
        rows = await self.pool.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries"
            " WHERE ($8 OR tenant_id = $1) AND ($2 = '' OR event_type = $2) AND ($3 = '' OR status = $3)"
            " AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5)"
            " AND ($6 = '' OR delivery_id < $6)"
            " AND ($9 = '' OR event_id IN (SELECT event_id FROM events WHERE order_id = $9))"
            " ORDER BY delivery_id DESC LIMIT $7",
            tenant_id,
            request.event_type,
            request.status,
            since,
            until,
            request.after_delivery_id,
            limit + 1,
            request.all_tenants,
            request.order_id,
        )
        return webhooks_pb2.ListDeliveriesResponse(
            deliveries=[await self._message(r) for r in rows[:limit]], has_more=len(rows) > limit
        )

    async def GetDelivery(self, request: webhooks_pb2.GetDeliveryRequest, context: Any) -> Any:
        return await self._message(await self._get(request), with_attempts=True)

    async def Redeliver(self, request: webhooks_pb2.GetDeliveryRequest, context: Any) -> Any:
        await self._get(request)
        await self.pool.execute(
            "UPDATE deliveries SET status = 'pending', cycle_attempts = 0, next_attempt_at = now(),"
            " updated_at = now() WHERE delivery_id = $1 AND (status <> 'pending' OR lease_until IS NULL)",
            request.delivery_id,
        )
        # The record of who asked: every log line carries the caller's request and operator ids.
        log.info("redelivery of %s requested", request.delivery_id, extra=logs.fields(delivery_id=request.delivery_id))
        self.wake.set()
        return await self._message(await self._get(request))

    async def RedeliverFailed(self, request: webhooks_pb2.RedeliverFailedRequest, context: Any) -> Any:
        tenant_id = scope(request.tenant_id, all_tenants=request.all_tenants)
        if not request.HasField("since"):
            raise errors.InvalidRequest("since is required", error_code="MISSING_PARAMETER")
        result = await self.pool.execute(
            "UPDATE deliveries SET status = 'pending', cycle_attempts = 0, next_attempt_at = now(), updated_at = now()"
            " WHERE status = 'failed' AND ($3 OR tenant_id = $1) AND updated_at >= $2",
            tenant_id,
            request.since.ToDatetime(tzinfo=datetime.UTC),
            request.all_tenants,
        )
        redelivered = int(result.split()[-1])
        log.info(
            "redelivery of %d failed deliveries requested",
            redelivered,
            extra=logs.fields(tenant_id=tenant_id or "*", since=request.since.ToJsonString(), redelivered=redelivered),
        )
        self.wake.set()
        return webhooks_pb2.RedeliverFailedResponse(redelivered=redelivered)

    async def SendTestEvent(self, request: webhooks_pb2.SendTestEventRequest, context: Any) -> Any:
        info = await self.tenants.get(scope(request.tenant_id, all_tenants=False))
        if not info.webhook_url:
            raise errors.InvalidRequest(
                "This tenant has no webhook URL to send a test event to.", error_code="NO_WEBHOOK_URL"
            )
        event_id = ids.new_id("evt")
        body = events.envelope(
            event_id=event_id,
            event_type="webhook.test",
            tenant_id=request.tenant_id,
            data={"message": "A test event from INVO Network."},
        )
        await self.consumer.record([(event_id, request.tenant_id, "webhook.test", body)])
        row = await self.pool.fetchrow(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE event_id = $1", event_id)
        return await self._message(row)


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    settings.require("nats_url")
    tenants_channel = grpcutil.channel(settings.tenants_addr)
    svc.on_shutdown(tenants_channel.close)
    tenants = TenantCache(tenants_pb2_grpc.TenantsServiceStub(tenants_channel), settings.rpc_timeout_s)
    wake = asyncio.Event()
    consumer = Consumer(pool, settings, tenants, wake)
    sender = Sender(pool, settings, tenants, wake)
    svc.on_shutdown(sender.close)
    nc = await events.connect_nats(settings.nats_url, name="invo-webhooks")
    svc.on_shutdown(nc.close)
    js = nc.jetstream()
    await events.ensure_stream(
        js,
        stream=settings.nats_stream,
        subject_prefix=settings.nats_subject_prefix,
        replicas=settings.nats_stream_replicas,
    )
    svc.background(consumer.run(js), "webhook-consumer")
    svc.background(sender.run(), "webhook-sender")
    svc.background(sender.outcomes.run(), "webhook-outcomes")

    async def count_backlog() -> None:  # deliveries_due, the partial index of pending rows
        metrics.WEBHOOK_BACKLOG.set(await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'"))

    svc.background(
        metrics.refresh_forever("backlog", count_backlog, interval_s=settings.metrics_refresh_s), "metrics-backlog"
    )
    svc.add(
        webhooks_pb2_grpc.add_WebhooksServiceServicer_to_server,
        Webhooks(pool, tenants, consumer, wake),
        webhooks_pb2.DESCRIPTOR.services_by_name["WebhooksService"].full_name,
    )
