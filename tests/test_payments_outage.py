"""The payments service outlives an outage of the ledger, its recovery loop's dependency, and the
order it could not credit is completed once the ledger is back: charged once, credited once.

The processor's webhooks are held back, so that only the API call and the recovery loop can
settle the order; released at the end, they change nothing."""

from __future__ import annotations

from typing import Any

from devstack.stack import Stack
from tests.helpers import Api, eventually
from tests.payments_resilience_support import (
    Sim,
    assert_charged_once,
    balance,
    email,
    order,
    order_id_of,
    purchase,
    ref,
    sim,
    tenant,
)
from tests.test_webhooks_outage import LogWatch

__all__ = ["sim"]  # the fixture, imported for this module's tests

OUTAGE_TIMEOUT_S = 60.0  # the order's lease (twice the processor timeout + 5 s) runs out first


async def test_an_order_charged_while_the_ledger_is_down_is_credited_once_it_is_back(
    api: Api, sim: Sim, stack: Stack
) -> None:
    t = await tenant(api)
    player, reference = email("outage"), ref()
    await sim.faults(webhook_hold=True)
    watch = LogWatch(stack, "payments")
    stack.stop_process("ledger")
    try:
        resp = await purchase(api, t, player, reference)
        # Charged at the processor, not credited: the caller is told to retry with the reference.
        assert resp.status == 503, resp
        assert resp.body["error_code"] == "SERVICE_UNAVAILABLE", resp
        order_id = await order_id_of(sim, reference)
        assert (await order(api, t, order_id))["status"] == "pending_payment"

        def recovery_met_the_outage() -> bool:
            return any(e.get("level") == "warning" and order_id in str(e.get("msg", "")) for e in watch.entries())

        async def met() -> bool:
            return recovery_met_the_outage() or watch.proc.poll() is not None

        await eventually(met, timeout_s=OUTAGE_TIMEOUT_S, interval_s=0.2)
        assert stack.dead() == [], stack.log_tail("payments")
    finally:
        stack.start_process("ledger")

    async def completed() -> dict[str, Any] | None:
        details = await order(api, t, order_id)
        return details if details["status"] == "completed" else None

    await eventually(completed, timeout_s=OUTAGE_TIMEOUT_S, interval_s=0.25)
    await assert_charged_once(api, sim, t, player, order_id)
    # The held webhook, delivered at last, changes nothing; a retry of the purchase replays.
    assert await sim.release_webhooks() >= 1
    replay = await purchase(api, t, player, reference)
    assert replay.status == 200 and replay.body["duplicate"] is True, replay
    assert replay.body["order_id"] == order_id
    await assert_charged_once(api, sim, t, player, order_id)
    assert await balance(api, t, player) == "100"
