"""Webhooks end to end, retries and redelivery: a failing receiver is retried by the schedule,
a delivery that never succeeds ends failed and is redelivered on request, and every event is
delivered at least once across a crash of the webhooks service.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import signal
import time
from collections.abc import Awaitable, Callable

import asyncpg

from devstack.stack import Stack
from tests.helpers import Api, eventually
from tests.webhooks_support import (
    RESPONSE_BODY_MAX,
    RESTARTER,
    Receiver,
    _true,
    credit,
    delivered_call,
    list_all,
    now_iso,
    receivers,
    schedule,
    send_test,
    settled,
    show,
    tenant_for,
)

__all__ = ["receivers"]  # the fixture, imported for this module's tests


# -- 3, 4. retries, failure, redelivery --------------------------------------------------------


async def test_a_receiver_down_for_four_attempts_gets_the_event_on_the_fifth_once(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers(fail_first=4)
    t = await tenant_for(api, rx)
    d = await send_test(api, t["sdk_key"])
    assert d["status"] == "pending" and d["attempts"] == 0
    done = await settled(api, t["sdk_key"], d["delivery_id"], "delivered")
    log = done["attempt_log"]
    assert done["attempts"] == 5 and len(log) == 5
    assert [a["status_code"] for a in log] == [500, 500, 500, 500, 200]
    assert [a["attempt"] for a in log] == [1, 2, 3, 4, 5]
    assert [a["response_body"] for a in log] == ["receiver is down"] * 4 + ["ok"]
    assert all(a["error"] is None and a["latency_ms"] >= 0 for a in log)
    # The retries keep to the schedule: each waits at least its entry after the attempt before
    # (timed at the receiver: the log's times are whole seconds).
    arrivals = [c.at for c in rx.of(d["event_id"])]
    for gap, wait in zip([b - a for a, b in itertools.pairwise(arrivals)], schedule(stack), strict=False):
        assert gap >= wait - 0.01, (gap, wait)
    assert done["delivered_at"] is not None and done["next_attempt_at"] is None
    # Once: a later event goes through, and the first one has still been seen five times only.
    await delivered_call(api, rx, t["sdk_key"])
    calls = rx.of(d["event_id"])
    assert len(calls) == 5
    assert [c.answered for c in calls] == [500, 500, 500, 500, 200]


async def test_a_receiver_failing_forever_ends_failed_and_is_redelivered_once_it_recovers(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers(failing=True, fail_body="down for maintenance " * 100)
    t = await tenant_for(api, rx)
    other = await api.create_tenant(webhook_url=rx.url)  # another tenant with failures of its own
    before = now_iso(-1)
    d1 = await send_test(api, t["sdk_key"])
    d2 = await send_test(api, t["sdk_key"])
    d3 = await send_test(api, other["sdk_key"])
    expected = 1 + len(schedule(stack))
    assert expected == 7
    failed = await settled(api, t["sdk_key"], d1["delivery_id"], "failed")
    await settled(api, t["sdk_key"], d2["delivery_id"], "failed")
    await settled(api, other["sdk_key"], d3["delivery_id"], "failed")
    log = failed["attempt_log"]
    assert failed["attempts"] == expected and len(log) == expected
    assert [a["attempt"] for a in log] == list(range(1, expected + 1))
    for a in log:
        assert a["status_code"] == 500 and a["error"] is None
        assert isinstance(a["latency_ms"], int) and a["latency_ms"] >= 0
        assert a["response_body"] == ("down for maintenance " * 100)[:RESPONSE_BODY_MAX]
    assert failed["next_attempt_at"] is None and failed["delivered_at"] is None
    assert len(rx.of(d1["event_id"])) == expected

    # The receiver recovers; one redelivery by id.
    rx.failing = False
    resp = await api.post(f"/api/webhooks/deliveries/{d1['delivery_id']}/redeliver", key=t["sdk_key"])
    assert resp.status == 200, resp
    assert resp.body["delivery_id"] == d1["delivery_id"] and resp.body["status"] in ("pending", "delivered")
    done = await settled(api, t["sdk_key"], d1["delivery_id"], "delivered")
    assert done["attempts"] == expected + 1
    assert [a["status_code"] for a in done["attempt_log"]] == [500] * expected + [200]
    assert [c.answered for c in rx.of(d1["event_id"])] == [500] * expected + [200]

    # Everything that failed since a time: this tenant's one remaining failure, not the other's.
    later = await api.post("/api/webhooks/redeliver-failed", key=t["sdk_key"], json={"since": now_iso(60)})
    assert later.status == 200 and later.body == {"redelivered": 0}, later
    resp = await api.post("/api/webhooks/redeliver-failed", key=t["sdk_key"], json={"since": before})
    assert resp.status == 200 and resp.body == {"redelivered": 1}, resp
    await settled(api, t["sdk_key"], d2["delivery_id"], "delivered")
    assert (await show(api, other["sdk_key"], d3["delivery_id"]))["status"] == "failed"
    assert [c.answered for c in rx.of(d2["event_id"])][-1] == 200
    # Nothing failed is left to redeliver.
    again = await api.post("/api/webhooks/redeliver-failed", key=t["sdk_key"], json={"since": before})
    assert again.body == {"redelivered": 0}, again


# -- 5. a crash of the webhooks service with deliveries in flight ------------------------------


async def test_killing_the_webhooks_service_with_1000_events_in_flight_delivers_each_at_least_once(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    n = 1000
    rx = await receivers(delay_s=0.1)
    t = await tenant_for(api, rx)
    tid = t["tenant_id"]
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"])
    try:
        started = time.monotonic()
        for chunk in range(0, n, 100):
            await asyncio.gather(*(credit(api, tid, f"p{i}@example.com", "1") for i in range(chunk, chunk + 100)))
        made_s = time.monotonic() - started

        async def all_recorded() -> bool:
            count = await conn.fetchval("SELECT count(*) FROM webhooks.deliveries WHERE tenant_id = $1", tid)
            return int(count) == n

        # Every event is recorded before the kill (so none waits out JetStream's 30 s ack_wait),
        # and the receiver has seen some of them but not all.
        await eventually(all_recorded, timeout_s=30)
        await eventually(lambda: _true(len(rx.event_ids()) >= 50), timeout_s=30)
        # The kill, then the count: with the service dead, the leases it held are exactly the
        # deliveries it had claimed and not finished (the ones in flight, and any it had claimed
        # and was about to hand back); nothing changes them until it is started again.
        old = stack.procs["webhooks"]
        loop = asyncio.get_running_loop()
        seen_at_kill = len(rx.event_ids())
        rx_in_flight = rx.in_flight  # no await in between: the receiver is as the kill finds it
        old.send_signal(signal.SIGKILL)
        await loop.run_in_executor(RESTARTER, old.wait, 10)
        leased = int(
            await conn.fetchval(
                "SELECT count(*) FROM webhooks.deliveries"
                " WHERE tenant_id = $1 AND status = 'pending' AND lease_until > now()",
                tid,
            )
        )
        # Started again (stack.restart finds it dead already and only starts and waits for it).
        await loop.run_in_executor(RESTARTER, functools.partial(stack.restart, "webhooks", sig=signal.SIGKILL))
        assert stack.procs["webhooks"].pid != old.pid and stack.procs["webhooks"].poll() is None
        assert seen_at_kill < n, "the receiver had everything before the kill: nothing was in flight"

        async def all_delivered() -> bool:
            if len(rx.event_ids()) < n:
                return False
            for status in ("pending", "failed"):
                resp = await api.get(f"/api/webhooks/deliveries?status={status}&limit=1", key=t["sdk_key"])
                if resp.body["data"]:
                    return False
            return True

        await eventually(all_delivered, timeout_s=60, interval_s=0.25)
        elapsed_s = time.monotonic() - started
    finally:
        await conn.close()

    log = await list_all(api, "/api/webhooks/deliveries", key=t["sdk_key"])
    assert len(log) == n and {d["status"] for d in log} == {"delivered"}
    assert {d["event_id"] for d in log} == rx.event_ids()
    assert {d["event_type"] for d in log} == {"balance.adjusted"}
    received = len(rx.calls)
    duplicates = received - n
    print(
        f"\n1000 events: made in {made_s:.1f}s, all delivered after {elapsed_s:.1f}s; at the kill the receiver"
        f" had seen {seen_at_kill}, had {rx_in_flight} requests in flight, the database held {leased} leases;"
        f" duplicates {duplicates}"
    )
    assert len(rx.event_ids()) == n
    assert 0 <= duplicates <= leased, (duplicates, leased)
    # And never more than one endpoint may have in flight at once.
    assert duplicates <= int(stack.env.get("INVO_WEBHOOK_PER_ENDPOINT_MAX", "8")), duplicates
    # Every attempt the log recorded reached the receiver; the ones cut off by the kill are not in it.
    assert all(d["attempts"] >= 1 for d in log)
    assert sum(d["attempts"] for d in log) <= received
