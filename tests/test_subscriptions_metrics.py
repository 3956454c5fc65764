"""The subscriptions service's metrics (services/common/metrics.py): a renewal the scheduler cannot
make (the ledger frozen) shows in the due gauges by the service's clock, and once it can, the
renewal is counted by outcome and nothing stays due. The test clock is set to this module's own
year, 2069, as every subscriptions test keeps to its own."""

from __future__ import annotations

import datetime
import os
import signal

from devstack import replicas
from devstack.stack import Stack
from tests import subscriptions_support as ss
from tests.helpers import Api, eventually
from tests.subscriptions_support import _ledger_checked
from tests.test_metrics import scrape, value

__all__ = ["_ledger_checked"]  # the autouse fixture: the ledger check after each test

START = datetime.datetime(2069, 2, 28, 12, tzinfo=datetime.UTC)
WAITED_S = 3600.0  # the clock is set this long after the period's end


async def test_a_stuck_renewal_shows_in_the_gauges_and_a_made_one_in_the_counter(api: Api, stack: Stack) -> None:
    await ss.set_clock(stack, START)
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "30")
    created = await ss.create(api, t, ss.body(email, price="10"))
    assert created.status == 201, created
    sid = created.body["subscription_id"]
    due = ss.parse(created.body["current_period"]["end"])
    url = replicas.metrics_urls(stack.replica_env)["subscriptions"]
    before = await scrape(url)

    async def gauges() -> tuple[float, float]:
        now = await scrape(url)
        return (
            value(now, "invo_subscription_renewals_due"),
            value(now, "invo_subscription_renewal_overdue_seconds"),
        )

    async def stuck() -> bool:  # refreshed every INVO_METRICS_REFRESH_S (1 s here)
        count, waited = await gauges()
        return count >= 1 and waited >= WAITED_S  # ours at least (older ones of other tests may wait longer)

    ledger = stack.procs["ledger"].pid
    os.kill(ledger, signal.SIGSTOP)
    try:
        await ss.set_clock(stack, due + datetime.timedelta(seconds=WAITED_S))
        await eventually(stuck, timeout_s=15)
        assert (await ss.get(api, t, sid))["periods_paid"] == 1  # not renewed while the ledger is frozen
    finally:
        os.kill(ledger, signal.SIGCONT)

    async def renewed() -> bool:
        return bool((await ss.get(api, t, sid))["periods_paid"] == 2)

    await eventually(renewed, timeout_s=40, interval_s=0.2)
    after = await scrape(url)
    renewals = value(after, "invo_subscription_renewals_total", outcome="renewed")
    assert renewals - value(before, "invo_subscription_renewals_total", outcome="renewed") >= 1

    async def caught_up() -> bool:
        return await gauges() == (0.0, 0.0)

    await eventually(caught_up, timeout_s=60, interval_s=0.5)  # every due subscription was handled
    assert await ss.balance(api, t, email) == "10"  # 30 less two periods: the second charged once
    resp = await api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json={"at_once": True})
    assert resp.status == 200, resp  # left active, a later test's clock would renew it
