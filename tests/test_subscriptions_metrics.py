"""The subscriptions service's metrics (services/common/metrics.py): a renewal the scheduler cannot
make (the ledger frozen) shows in the due gauges by the service's clock, exactly, and once it can,
the renewal is counted by outcome and nothing is due any more.

The gauges count every subscription in the network, so the test clock is set where no other one
can be due: two months before the earliest next attempt of any (earlier tests leave some running,
one of them eleven years of monthly periods behind the clock of the test before), and never later
than this module's own year, 2069."""

from __future__ import annotations

import datetime
import os
import signal
from typing import Any

from devstack import replicas
from devstack.stack import Stack
from tests import subscriptions_support as ss
from tests.helpers import Api, eventually
from tests.subscriptions_support import _ledger_checked
from tests.test_metrics import scrape, value

__all__ = ["_ledger_checked"]  # the autouse fixture: the ledger check after each test

LATEST_START = datetime.datetime(2069, 2, 28, 12, tzinfo=datetime.UTC)
CLEAR = datetime.timedelta(days=62)  # more than the month the test moves the clock on
WAITED_S = 3600.0  # the clock is set this long after the period's end


async def quiet_start(stack: Stack) -> datetime.datetime:
    """A start from which a month and an hour on, no subscription but the test's own is due."""
    rows = await ss.db(
        stack, f"SELECT min(next_attempt_at) AS first FROM {ss.schema(stack, 'subscriptions')}.subscriptions"
    )
    first = rows[0]["first"]
    return LATEST_START if first is None else min(LATEST_START, (first - CLEAR).replace(microsecond=0))


async def due_rows(stack: Stack) -> list[dict[str, Any]]:
    """What is due by the service's clock, for a failure's message."""
    s = ss.schema(stack, "subscriptions")
    rows = await ss.db(
        stack,
        "SELECT subscription_id, status, next_attempt_at, processing_until, periods_paid, failed_attempts"
        f" FROM {s}.subscriptions WHERE next_attempt_at <= (SELECT now FROM {s}.test_clock)"
        " ORDER BY next_attempt_at LIMIT 10",
    )
    return [dict(r) for r in rows]


async def test_a_stuck_renewal_shows_in_the_gauges_and_a_made_one_in_the_counter(api: Api, stack: Stack) -> None:
    await ss.set_clock(stack, await quiet_start(stack))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "30")
    created = await ss.create(api, t, ss.body(email, price="10"))
    assert created.status == 201, created
    sid = created.body["subscription_id"]
    due = ss.parse(created.body["current_period"]["end"])
    url = replicas.metrics_urls(stack.replica_env)["subscriptions"]
    before = await scrape(url)

    async def gauges() -> tuple[float, float]:  # refreshed every INVO_METRICS_REFRESH_S (1 s here)
        now = await scrape(url)
        return (
            value(now, "invo_subscription_renewals_due"),
            value(now, "invo_subscription_renewal_overdue_seconds"),
        )

    async def reads(want: tuple[float, float], timeout_s: float) -> None:
        async def check() -> bool:
            return await gauges() == want

        async def seen() -> str:
            return f"gauges {await gauges()}; due: {await due_rows(stack)}"

        await eventually(check, timeout_s=timeout_s, interval_s=0.2, describe=seen)

    ledger = stack.procs["ledger"].pid
    os.kill(ledger, signal.SIGSTOP)
    try:
        await ss.set_clock(stack, due + datetime.timedelta(seconds=WAITED_S))
        await reads((1.0, WAITED_S), timeout_s=15)  # ours alone, waiting exactly the hour, by the clock
        assert (await ss.get(api, t, sid))["periods_paid"] == 1  # not renewed while the ledger is frozen
    finally:
        os.kill(ledger, signal.SIGCONT)

    async def renewed() -> bool:
        return bool((await ss.get(api, t, sid))["periods_paid"] == 2)

    await eventually(renewed, timeout_s=40, interval_s=0.2)
    after = await scrape(url)
    renewals = value(after, "invo_subscription_renewals_total", outcome="renewed")
    assert renewals - value(before, "invo_subscription_renewals_total", outcome="renewed") >= 1
    await reads((0.0, 0.0), timeout_s=15)  # its next attempt is the next period's end
    assert await ss.balance(api, t, email) == "10"  # 30 less two periods: the second charged once
    resp = await api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json={"at_once": True})
    assert resp.status == 200, resp  # left active, a later test's clock would renew it
