"""Currency purchases when things go wrong, the circuit breaker: a failing processor opens it,
it refuses at once while open, and it recovers.

Everything goes through the public gateway and the processor simulator; the simulator's own record
(`/_sim/state`) is the proof of how many times a card was charged.
"""

from __future__ import annotations

import time

from tests.helpers import Api, assert_envelope
from tests.payments_resilience_support import Sim, assert_charged_once, email, purchase, ref, settle, sim, tenant

__all__ = ["sim"]  # the fixture, imported for this module's tests


# -- 4. the circuit breaker -------------------------------------------------------------------


async def test_circuit_breaker_refuses_at_once_then_recovers(api: Api, sim: Sim) -> None:
    # A $10 daily cap: a refused purchase that reserved its amount would block the next one.
    t = await tenant(api, spending_caps={"daily_usd": "10.00"})
    failing = [(email(f"brk{i}"), ref()) for i in range(5)]
    refused_player, refused_ref = email("brk-refused"), ref()
    try:
        await sim.faults(fail_next=5)
        for player, reference in failing:
            resp = await purchase(api, t, player, reference)
            assert_envelope(resp, 503, "PROCESSOR_UNAVAILABLE")
        calls = len((await sim.state())["calls"])
        started = time.monotonic()
        refused = await purchase(api, t, refused_player, refused_ref)
        elapsed = time.monotonic() - started
        assert_envelope(refused, 503, "PROCESSOR_UNAVAILABLE")
        assert int(refused.headers["Retry-After"]) >= 1
        assert elapsed < 0.5, elapsed
        assert len((await sim.state())["calls"]) == calls, "the open breaker must not reach the processor"

        # After the cool-down one probe goes through; it succeeds and closes the breaker. (The
        # recovery loop may take the probe first; then ours is refused once and retried.)
        probe = await settle(api, t, refused_player, ref())
        assert probe.body["new_balance"] == "100"
        # The refused purchase neither reserved the cap nor created an order: its reference is unused,
        # and now the cap (taken by the probe) refuses it as a new purchase.
        again = await purchase(api, t, refused_player, refused_ref)
        assert_envelope(again, 429, "SPENDING_LIMIT_EXCEEDED")
        assert await sim.intents(reference=refused_ref) == []
        flowing = await purchase(api, t, email("brk-after"), ref())
        assert flowing.status == 200 and flowing.body["duplicate"] is False, flowing
    finally:
        await sim.reset()

    # The purchases whose processor call failed were in flight with an unknown outcome: each is
    # settled later (recovery or retry), charged once and credited once.
    for player, reference in failing:
        settled = await settle(api, t, player, reference)
        await assert_charged_once(api, sim, t, player, settled.body["order_id"])
