"""An order never gets a second PaymentIntent, whatever dies and whatever the processor forgets.

Issue 11, finding 1: with the ledger down between the charge and the credit, a restart of the
network (the simulator's memory included) made the recovery loop drive the order again with the
same idempotency key, and a processor that no longer knew the key charged the card a second
time. Now the intent is created unconfirmed and its id stored before it is confirmed, every later
attempt drives the stored one, and the simulator keeps its state across restarts as Stripe does.

And finding 5: a database timeout during a currency purchase is a 503 with Retry-After, and the
same request retried afterwards finishes the purchase, charged once.
"""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from devstack.stack import Stack
from tests.helpers import Api, assert_envelope, eventually
from tests.payments_resilience_support import (
    Sim,
    assert_charged_once,
    balance,
    email,
    order,
    purchase,
    ref,
    settle,
    sim,
    tenant,
)

__all__ = ["sim"]  # the fixture, imported for this module's tests


def succeeded(intents: list[dict[str, object]]) -> list[dict[str, object]]:
    return [pi for pi in intents if pi["status"] == "succeeded"]


async def test_ledger_down_then_the_simulator_restarts_charges_once(api: Api, sim: Sim, stack: Stack) -> None:
    t = await tenant(api)
    player, reference = email("ledgerdown"), ref()
    stack.stop_process("ledger")
    try:
        first = await purchase(api, t, player, reference)
        # Charged, not credited: the ledger is away. The answer says retry; nothing is lost.
        assert first.status == 503, first
        assert first.headers.get("Retry-After"), first.headers
        charged = succeeded(await sim.intents(reference=reference))
        assert len(charged) == 1, charged
        # The processor restarts (killed) while the ledger is still away.
        stack.restart("processor_sim", sig=signal.SIGKILL)
    finally:
        stack.start_process("ledger")
    settled = await settle(api, t, player, reference)
    # The processor still knows the one intent, and nobody made a second one.
    intents = await sim.intents(reference=reference)
    assert [pi["id"] for pi in intents] == [charged[0]["id"]], intents
    details = await assert_charged_once(api, sim, t, player, settled.body["order_id"])
    assert details["payment_intent_id"] == charged[0]["id"]


@pytest.mark.parametrize("lost", ["create", "confirm"])
async def test_a_lost_answer_after_the_keys_expired_charges_once(api: Api, sim: Sim, lost: str) -> None:
    """The processor did the work but its answer was lost (longer than our timeout), and by the
    retry it has forgotten the idempotency key (Stripe keeps them 24 hours): still one charge."""
    t = await tenant(api)
    player, reference = email(f"lost{lost}"), ref()
    # Only our own call: a call of the recovery loop for another test's order must not take the fault.
    match = "/confirm" if lost == "confirm" else "POST /v1/payment_intents"
    # 4 s is longer than the tests' INVO_PROCESSOR_TIMEOUT_S=3; webhooks held so only calls settle.
    await sim.faults(slow_next=1, slow_s=4, webhook_hold=True, match=match)
    first = await purchase(api, t, player, reference)
    assert_envelope(first, 503, "PROCESSOR_UNAVAILABLE")
    await sim.control("forget_idempotency")
    settled = await settle(api, t, player, reference)
    intents = await sim.intents(reference=reference)
    assert len(succeeded(intents)) == 1, intents
    if lost == "create":
        # The intent whose answer was lost is an orphan nobody confirms: it charged nothing.
        assert sorted(str(pi["status"]) for pi in intents) == ["requires_confirmation", "succeeded"], intents
    else:
        assert len(intents) == 1, intents
    assert await balance(api, t, player) == "100"
    await sim.release_webhooks()  # late, they change nothing
    assert await balance(api, t, player) == "100"
    details = await order(api, t, settled.body["order_id"])
    assert details["status"] == "completed"
    assert details["payment_intent_id"] == succeeded(intents)[0]["id"]


async def test_an_intent_the_processor_forgot_holds_the_order_and_makes_no_other(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    player, reference = email("forgot"), ref()
    await sim.faults(timeout_next=1, timeout_s=4, match="/confirm")
    first = await purchase(api, t, player, reference)
    assert_envelope(first, 503, "PROCESSOR_UNAVAILABLE")
    [pi] = await sim.intents(reference=reference)
    assert pi["status"] == "requires_confirmation"
    await sim.control("forget_intent", {"payment_intent": pi["id"]})
    again = await purchase(api, t, player, reference)
    assert_envelope(again, 409, "PAYMENT_UNDER_REVIEW")
    assert await sim.intents(reference=reference) == []  # no second intent
    assert await balance(api, t, player) == "0"


async def test_a_database_timeout_is_503_and_the_retry_charges_once(api: Api, sim: Sim, stack: Stack) -> None:
    t = await tenant(api)
    player, reference = email("dbstall"), ref()
    holder = await asyncpg.connect(stack.env["INVO_DATABASE_URL"])
    try:
        # Every statement on the orders table waits on this lock until the statement timeout.
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE payments.orders IN ACCESS EXCLUSIVE MODE")
        stalled = await purchase(api, t, player, reference)
        assert_envelope(stalled, 503, "SERVICE_UNAVAILABLE")
        assert stalled.headers.get("Retry-After") == "1", stalled.headers
        await tx.rollback()
    finally:
        await holder.close()
    assert await sim.intents(reference=reference) == []  # nothing reached the processor
    settled = await settle(api, t, player, reference)
    await assert_charged_once(api, sim, t, player, settled.body["order_id"])


async def test_purchases_racing_on_one_reference_make_one_intent(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    player, reference = email("race"), ref()
    answers = await asyncio.gather(*(purchase(api, t, player, reference) for _ in range(8)))
    assert {a.status for a in answers} <= {200, 409}, answers
    settled = await settle(api, t, player, reference)
    await assert_charged_once(api, sim, t, player, settled.body["order_id"])


async def test_an_order_that_fails_every_time_does_not_block_recovery_of_the_others(api: Api, sim: Sim) -> None:
    """The recovery loop takes the oldest stale order first and stops its round at a failure: an
    order whose every drive fails must keep its lease until it runs out, or it would come first in
    every round and no other order would ever be recovered."""
    t = await tenant(api)
    stuck_player, stuck_ref = email("stuck"), ref()
    await sim.faults(timeout_next=1, timeout_s=4, match="/confirm")
    assert_envelope(await purchase(api, t, stuck_player, stuck_ref), 503, "PROCESSOR_UNAVAILABLE")
    [stuck] = await sim.intents(reference=stuck_ref)
    # From now on every look at the stuck order's intent fails (a processor error on that one call).
    await sim.faults(fail_next=1_000_000, fail_match=f"GET /v1/payment_intents/{stuck['id']}")
    player, reference = email("behind"), ref()
    await sim.faults(timeout_next=1, timeout_s=4, match="/confirm")
    behind = await purchase(api, t, player, reference)
    assert_envelope(behind, 503, "PROCESSOR_UNAVAILABLE")
    [pi] = await sim.intents(reference=reference)
    order_id = str(pi["metadata"]["order_id"])

    async def recovered() -> bool:
        return (await order(api, t, order_id))["status"] == "completed"

    # Only the recovery loop drives it (nobody retries the purchase): a few rounds of 2 s at most.
    assert await eventually(recovered, timeout_s=20, interval_s=0.25)
    assert await balance(api, t, player) == "100"
    assert await balance(api, t, stuck_player) == "0"
    # Finish the stuck one too, so that the recovery loop does not settle it later, in the middle
    # of another test (whose held webhooks it would add to).
    await sim.reset()
    stuck_settled = await settle(api, t, stuck_player, stuck_ref)
    assert stuck_settled.body["new_balance"] == "100"
