"""The `subscription-renewal` scenario: due subscriptions renewed per second by the subscriptions
service's own renewal loop (no client drives it).

Set up, not measured: SUBSCRIBERS funded players of one tenant subscribe through the gateway to a
monthly plan of 0.01 unit, as many subscriptions as the service could renew in the scenario's
duration at RENEWALS_PER_S_MAX (bounded). Then the service's clock moves a month on (the network
must run with INVO_SUBSCRIPTIONS_TEST_CLOCK=on, as `make bench`'s own network does; against one
without it the scenario is skipped and says so), every subscription falls due at once, and the
time until each has paid its second period is measured from the database (polled every POLL_S):
req/s is renewals a second, a "latency" is the time from the clock's move to that renewal.
Afterwards every subscription must read `periods_paid` 2 and every player hold exactly its
funding less two charges per subscription.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from invo.v1 import subscriptions_pb2, subscriptions_pb2_grpc

from bench import runner as load
from bench.runner import Run
from bench.scenarios import FUNDING_UNITS, Bench
from services.common.config import Settings

NAME = "subscription-renewal"
SUBSCRIBERS = 64
RENEWALS_PER_S_MAX = 400
SUBSCRIPTIONS_MIN, SUBSCRIPTIONS_MAX = 200, 4000
PRICE = "0.01"
POLL_S = 0.05
DRAIN_TIMEOUT_S = 120.0


async def _set_clock(address: str, at: datetime.datetime) -> bool:
    """The service's clock at `at`; False when its test clock is off."""
    ts = Timestamp()
    ts.FromDatetime(at)
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = subscriptions_pb2_grpc.SubscriptionsServiceStub(channel)
        try:
            await stub.SetTestClock(subscriptions_pb2.SetTestClockRequest(now=ts), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                return False
            raise
    return True


async def renewals(b: Bench) -> Run:
    address = b.env["INVO_SUBSCRIPTIONS_ADDR"].split(",")[0]
    start = datetime.datetime(2095, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(days=int(time.time()) % 3650)
    run = Run()
    if not await _set_clock(address, start):
        run.extra["note"] = "skipped: the network runs without INVO_SUBSCRIPTIONS_TEST_CLOCK=on"
        return run
    t = await b.tenant()
    players = [f"sr{p}-{b.run_id}@bench.test" for p in range(SUBSCRIBERS)]
    await b.fund(t["tenant_id"], players)
    count = max(SUBSCRIPTIONS_MIN, min(SUBSCRIPTIONS_MAX, int(b.duration_s * RENEWALS_PER_S_MAX)))
    made: list[str] = []
    refused = 0

    async def subscribe(w: int) -> None:
        nonlocal refused
        for i in range(w, count, b.concurrency):
            body = {
                "player_email": players[i % SUBSCRIBERS],
                "plan_id": f"bench-plan-{i}",
                "plan_name": "Bench Plan",
                "price": PRICE,
                "interval": "month",
                "idempotency_key": f"{NAME}-{b.run_id}-{i}",
            }
            status, raw = await b.conns[w].request(
                "POST", "/api/subscriptions", headers={"X-Game-Secret-Key": t["sdk_key"]}, body=body
            )
            if status == 201:
                made.append(str(json.loads(raw)["subscription_id"]))
            else:
                refused += 1

    await asyncio.gather(*(subscribe(w) for w in range(b.concurrency)))
    schema = Settings.from_env(b.env).schema("subscriptions")
    conn = await asyncpg.connect(b.env["INVO_DATABASE_URL"], timeout=10)
    try:
        if load.OBSERVER is not None:
            await load.OBSERVER.begin()
        moved = time.monotonic()
        await _set_clock(address, start + datetime.timedelta(days=31, hours=1))
        seen = 0
        while seen < len(made) and time.monotonic() - moved < DRAIN_TIMEOUT_S:
            await asyncio.sleep(POLL_S)  # sampling the drain's progress, bounded by DRAIN_TIMEOUT_S
            done = await conn.fetchval(
                f'SELECT count(*) FROM "{schema}".subscriptions WHERE subscription_id = ANY($1) AND periods_paid >= 2',
                made,
            )
            run.latencies_s += [time.monotonic() - moved] * (done - seen)
            seen = done
        run.elapsed_s = max(1e-6, run.latencies_s[-1]) if run.latencies_s else DRAIN_TIMEOUT_S
        if load.OBSERVER is not None:
            run.extra["database"] = await load.OBSERVER.end()
        wrong = await conn.fetchval(
            f'SELECT count(*) FROM "{schema}".subscriptions WHERE subscription_id = ANY($1) AND periods_paid <> 2',
            made,
        )
    finally:
        await conn.close()
    run.errors = len(made) - seen + refused
    balances_wrong = await _balances_wrong(b, t, players, made_per_player=_per_player(len(made), count))
    run.extra |= {
        "subscriptions": len(made),
        "create_refused": refused,
        "periods_wrong": wrong,
        "balances_wrong": balances_wrong,
        "note": "latency = time from the clock's move to each renewal (the due backlog's drain)",
    }
    return run


def _per_player(made: int, count: int) -> list[int]:
    """Subscriptions per player, had every create succeeded (the check needs them all)."""
    return [len(range(p, count, SUBSCRIBERS)) for p in range(SUBSCRIBERS)] if made == count else []


async def _balances_wrong(b: Bench, t: dict[str, Any], players: list[str], *, made_per_player: list[int]) -> int:
    if not made_per_player:
        return len(players)
    assert b.http is not None
    async with b.http.post(
        b.gateway + "/api/players/balances",
        json={"player_emails": players},
        headers={"X-Game-Secret-Key": t["sdk_key"]},
    ) as resp:
        lines = (await resp.json())["balances"]
    have = {line["player_email"]: Decimal(line["balance"]) for line in lines}
    want = {p: Decimal(FUNDING_UNITS) - 2 * Decimal(PRICE) * n for p, n in zip(players, made_per_player, strict=True)}
    return sum(1 for p in players if have.get(p) != want[p])
