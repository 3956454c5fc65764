"""Prometheus metrics: what every process measures, and the `/metrics` server that shows them.

One registry per process (each service and each gateway is its own process). Every process serves
`GET /metrics` in Prometheus' text format on `INVO_METRICS_LISTEN` (`0.0.0.0:9090` in k8s/, a free
loopback port per process under `make run` and in the tests; empty: no server), a port of its own,
never the gateway's public one: request counts per route are nobody's business outside.

The names (all `invo_`-prefixed; Prometheus adds each pod's job and instance):

- `invo_http_requests_total{route, method, status}`, `invo_http_request_duration_seconds{route,
  method}`: the gateway, per declared route (its template, `/api/orders/{order_id}`; a path that
  matches no route is `unmatched`, so labels stay bounded whatever is requested);
- `invo_rpc_handled_total{method, code}`, `invo_rpc_duration_seconds{method}`: every gRPC server,
  per method; `code` is `OK` or the answer's error code (`INSUFFICIENT_BALANCE`, `UNAVAILABLE`, ...);
- `invo_ledger_batch_ops`: ops per ledger write batch (its group commit);
- `invo_outbox_published_total`, `invo_outbox_lag_seconds`: events relayed to NATS, and the age of
  the oldest event the last relay round found unpublished (0 when it found none);
- `invo_webhook_deliveries_total{outcome}` (delivered, retrying, failed),
  `invo_webhook_delivery_latency_seconds` (from the event's recording to its delivery),
  `invo_webhook_backlog` (deliveries pending);
- `invo_breaker_open{breaker}`: 1 while a circuit breaker refuses calls (payments' `processor`,
  payouts' `ach`), else 0;
- `invo_ledger_pending_holds{kind}`, `invo_payouts{status}`: counted in the database every
  `INVO_METRICS_REFRESH_S`;
- `invo_subscription_renewals_total{outcome}` (renewed, past_due, cancelled, deferred): what each
  renewal round did; `invo_subscription_renewals_due` and `invo_subscription_renewal_overdue_seconds`:
  the subscriptions due now by the service's clock, and how long the oldest has waited, refreshed
  every `INVO_METRICS_REFRESH_S` (a scheduler that is stuck or behind shows in the second);
- the client library's own `process_*` (CPU, memory, open files) and `python_*` (GC) series.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from services.common import loops

log = logging.getLogger("invo.metrics")

# A `_created` timestamp beside every counter and histogram doubles the series for nothing Prometheus
# needs (it sees resets itself).
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

DUE_COUNT_MAX = 100_000  # a count of due subscriptions reads at most this many index entries
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"

HTTP_REQUESTS = Counter(
    "invo_http_requests", "HTTP requests answered by the gateway.", ["route", "method", "status"], registry=REGISTRY
)
HTTP_DURATION = Histogram(
    "invo_http_request_duration_seconds",
    "Time to answer an HTTP request, from its arrival to its answer.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS_S,
    registry=REGISTRY,
)
RPC_HANDLED = Counter(
    "invo_rpc_handled", "gRPC calls this server answered, by method and code.", ["method", "code"], registry=REGISTRY
)
RPC_DURATION = Histogram(
    "invo_rpc_duration_seconds",
    "Time to answer a gRPC call.",
    ["method"],
    buckets=LATENCY_BUCKETS_S,
    registry=REGISTRY,
)
LEDGER_BATCH_OPS = Histogram(
    "invo_ledger_batch_ops",
    "Ops applied per ledger write batch (one database transaction each).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
OUTBOX_PUBLISHED = Counter("invo_outbox_published", "Events relayed from the outbox to NATS.", registry=REGISTRY)
OUTBOX_LAG = Gauge(
    "invo_outbox_lag_seconds",
    "Age of the oldest event the last relay round found unpublished (0 when none).",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "invo_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retrying (will be tried again), failed (given up).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "invo_webhook_delivery_latency_seconds",
    "From an event's recording by the webhooks service to its delivery.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0, 86400.0),
    registry=REGISTRY,
)
WEBHOOK_BACKLOG = Gauge(
    "invo_webhook_backlog", "Webhook deliveries pending (due or waiting to retry).", registry=REGISTRY
)
BREAKER_OPEN = Gauge(
    "invo_breaker_open", "1 while the circuit breaker refuses calls, else 0.", ["breaker"], registry=REGISTRY
)
LEDGER_PENDING_HOLDS = Gauge(
    "invo_ledger_pending_holds", "Holds not yet posted or voided, by kind.", ["kind"], registry=REGISTRY
)
PAYOUTS = Gauge("invo_payouts", "Payouts by status.", ["status"], registry=REGISTRY)
SUBSCRIPTION_RENEWALS = Counter(
    "invo_subscription_renewals",
    "Subscriptions a renewal round finished with, by outcome: renewed, past_due, cancelled, deferred.",
    ["outcome"],
    registry=REGISTRY,
)
SUBSCRIPTION_RENEWALS_DUE = Gauge(
    "invo_subscription_renewals_due",
    f"Subscriptions due for a renewal attempt and not yet renewed (counted up to {DUE_COUNT_MAX:,}).",
    registry=REGISTRY,
)
SUBSCRIPTION_RENEWAL_OVERDUE = Gauge(
    "invo_subscription_renewal_overdue_seconds",
    "How long the oldest due renewal attempt has waited (0 when none is due).",
    registry=REGISTRY,
)


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_DURATION.labels(route, method).observe(seconds)


def observe_rpc(method: str, code: str, seconds: float) -> None:
    RPC_HANDLED.labels(method, code).inc()
    RPC_DURATION.labels(method).observe(seconds)


def set_counts(gauge: Gauge, counts: dict[str, int], known: tuple[str, ...] = ()) -> None:
    """Set a labelled gauge to `counts`; labels seen before (or `known`) and now absent read 0."""
    seen = {labels[0] for labels in gauge._metrics} | set(known)
    for label in seen | set(counts):
        gauge.labels(label).set(counts.get(label, 0))


async def exposition(request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(listen: str) -> Callable[[], Awaitable[None]] | None:
    """Start the `/metrics` server on `listen` (`host:port`); returns its stop, or None when
    `listen` is empty."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    app = web.Application()
    app.router.add_get("/metrics", exposition)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
    log.info("metrics on http://%s/metrics", listen)
    return runner.cleanup


async def refresh_forever(name: str, refresh: Callable[[], Awaitable[None]], *, interval_s: float) -> NoReturn:
    """Run `refresh` (a bounded query setting gauges) every `interval_s`, surviving outages."""

    async def one_round() -> float:
        await refresh()
        return interval_s

    await loops.supervised(f"metrics-{name}", one_round, interval_s=interval_s, log=log)
