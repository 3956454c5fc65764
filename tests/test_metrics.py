"""/metrics of every process (services/common/metrics.py): each serves Prometheus' text format on a
port of its own, and after a mixed load the counters moved by what the load did. Exact where only
this test can move a series (the gateway's routes and statuses, one-to-one RPCs, error codes); at
least where background work of earlier tests may add to it (ledger batches, the outbox, webhook
deliveries)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from devstack import replicas
from devstack.stack import Stack
from services.common.config import SERVICES
from tests import payouts_support as ps
from tests.helpers import Api, eventually
from tests.webhooks_support import Receiver, receivers, tenant_for

__all__ = ["receivers"]  # the fixture, imported for this module's tests

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PURCHASE = "/api/item-purchases/purchase-item"


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, http.get(url) as resp:
        assert resp.status == 200, url
        assert resp.headers["Content-Type"].startswith("text/plain; version="), resp.headers
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def scrape_all(stack: Stack) -> dict[str, Samples]:
    return {name: await scrape(url) for name, url in replicas.metrics_urls(stack.replica_env).items()}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def moved(before: Mapping[str, Samples], after: Mapping[str, Samples], process: str) -> Callable[..., float]:
    def delta(name: str, **labels: str) -> float:
        return value(after[process], name, **labels) - value(before[process], name, **labels)

    return delta


async def test_every_process_serves_its_metrics(stack: Stack) -> None:
    urls = replicas.metrics_urls(stack.replica_env)
    assert set(urls) == {*SERVICES, "gateway"}
    assert len({u.rpartition(":")[2] for u in urls.values()}) == len(urls), "a port of its own each"
    assert all(u.startswith("http://127.0.0.1:") for u in urls.values())
    scraped = await scrape_all(stack)
    for name, samples in scraped.items():
        names = {n for n, _ in samples}
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names, name
    assert any(n == "invo_http_requests_total" for n, _ in scraped["gateway"])
    assert not any(n.endswith("_created") for samples in scraped.values() for n, _ in samples), "no _created series"
    assert value(scraped["payments"], "invo_breaker_open", breaker="processor") == 0
    assert value(scraped["payouts"], "invo_breaker_open", breaker="ach") == 0


async def test_the_counters_move_by_what_a_mixed_load_did(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    players = [f"m{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(3)]
    before = await scrape_all(stack)

    for p in players:
        assert (await api.credit(t["tenant_id"], p, "10")).status == 200
    bought = refused = 0
    for i in range(7):
        resp = await api.post(
            PURCHASE,
            key=t["sdk_key"],
            json={
                "player_email": players[i % 3],
                "item_id": "sword",
                "item_name": "Sword",
                "price": "4" if i < 6 else "100",  # two 4s fit each wallet of 10; the seventh does not
                "idempotency_key": uuid.uuid4().hex,
            },
        )
        assert resp.status in (200, 402), resp
        bought += resp.status == 200
        refused += resp.status == 402
    assert (bought, refused) == (6, 1)
    debit = await api.post(
        "/admin/players/debit",
        admin=True,
        json={
            "tenant_id": t["tenant_id"],
            "player_email": players[0],
            "amount": "1000",
            "reason": "metrics test",
            "idempotency_key": uuid.uuid4().hex,
        },
    )
    assert debit.status == 402, debit
    assert (await api.get("/api/no-such-route-" + uuid.uuid4().hex, key=t["sdk_key"])).status == 404
    assert (await api.get("/metrics")).status == 404, "never on the public port"
    earning = await ps.earning_tenant(api)
    asked = await ps.request(api, earning, "5.00")
    assert asked.status == 201, asked
    # Every event of the tenant reached the receiver: its six purchases (credits send none).
    await eventually(lambda: _at_least(rx, 6), timeout_s=20)

    async def settled() -> bool:  # the gauges refresh every INVO_METRICS_REFRESH_S (1 s here)
        now = await scrape_all(stack)
        # Our payout waits for review: at least it is counted, and its hold (others may come and go).
        return (
            value(now["payouts"], "invo_payouts", status="requested") >= 1
            and value(now["ledger"], "invo_ledger_pending_holds", kind="payout_hold") >= 1
        )

    await eventually(settled, timeout_s=15)
    after = await scrape_all(stack)
    gw = moved(before, after, "gateway")
    route = {"route": PURCHASE, "method": "POST"}
    assert gw("invo_http_requests_total", **route, status="200") == 6 + 1  # and the earning tenant's
    assert gw("invo_http_requests_total", **route, status="402") == 1
    assert gw("invo_http_request_duration_seconds_count", **route) == 8
    credit = {"route": "/admin/players/credit", "method": "POST"}
    assert gw("invo_http_requests_total", **credit, status="200") == 3 + 1  # our three, and the earning tenant's
    assert gw("invo_http_requests_total", route="unmatched", method="GET", status="404") == 2  # and /metrics
    assert not any("no-such-route" in dict(ls).get("route", "") for _, ls in after["gateway"])

    tenants = moved(before, after, "tenants")
    assert tenants("invo_rpc_handled_total", method="TenantsService/CreateTenant", code="OK") == 1  # the earning one
    ledger = moved(before, after, "ledger")
    assert ledger("invo_rpc_handled_total", method="LedgerService/AdjustBalance", code="OK") == 4
    assert ledger("invo_rpc_handled_total", method="LedgerService/AdjustBalance", code="INSUFFICIENT_BALANCE") == 1
    assert ledger("invo_rpc_duration_seconds_count", method="LedgerService/AdjustBalance") == 5
    # Batches: every credit, purchase and the refused debit is one op (background work may add more).
    assert ledger("invo_ledger_batch_ops_sum") >= 4 + 8 + 1 + 1  # credits, purchases, the debit, the hold
    assert 1 <= ledger("invo_ledger_batch_ops_count") <= ledger("invo_ledger_batch_ops_sum")
    assert ledger("invo_outbox_published_total") >= 6 + 1  # item.purchased: ours, the earning tenant's
    assert value(after["ledger"], "invo_outbox_lag_seconds") >= 0
    statuses = {dict(ls)["status"] for n, ls in after["payouts"] if n == "invo_payouts"}
    assert statuses >= {"requested", "approved", "processing", "completed", "returned", "rejected", "failed"}
    payouts = moved(before, after, "payouts")
    assert payouts("invo_rpc_handled_total", method="PayoutsService/RequestPayout", code="OK") == 1
    hooks = moved(before, after, "webhooks")
    delivered = len([c for c in rx.calls if c.answered == 200])
    assert hooks("invo_webhook_deliveries_total", outcome="delivered") >= delivered >= 6
    assert hooks("invo_webhook_delivery_latency_seconds_count") >= delivered
    assert value(after["webhooks"], "invo_webhook_backlog") >= 0


async def _at_least(rx: Receiver, n: int) -> bool:
    return len([c for c in rx.calls if c.answered == 200]) >= n
