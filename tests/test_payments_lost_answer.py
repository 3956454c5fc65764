"""Currency purchases when things go wrong, a lost answer: a retry while the processor is slow,
the processor's webhook before the late API answer, a processor timeout, and a payments service
killed mid-purchase (or restarted from a worker thread) each end charged once and credited once.

Everything goes through the public gateway and the processor simulator; the simulator's own record
(`/_sim/state`) is the proof of how many times a card was charged.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import aiohttp

from devstack.stack import Stack
from tests.helpers import Api, Response, assert_envelope, eventually
from tests.payments_resilience_support import (
    Sim,
    assert_charged_once,
    balance,
    email,
    order,
    order_id_of,
    purchase,
    ref,
    settle,
    sim,
    tenant,
)

__all__ = ["sim"]  # the fixture, imported for this module's tests


# -- 1. a purchase whose HTTP answer is lost charges once and credits once --------------------


async def test_retry_while_the_processor_is_slow_is_409_pending_then_the_first_result(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    player, reference = email("slow"), ref()
    # Webhooks are held so that only the API call can settle the order: the retry must find it in flight.
    await sim.faults(slow_next=1, slow_s=2, webhook_hold=True, match="/confirm")
    first = asyncio.create_task(purchase(api, t, player, reference))
    try:
        order_id = await order_id_of(sim, reference)  # the processor did the work; its answer is late
        retry = await purchase(api, t, player, reference)
        assert retry.status == 409, retry
        assert retry.body["status"] == "pending" and retry.body["duplicate"] is True
        assert retry.body["order_id"] == order_id and retry.body["purchase_reference"] == reference
        assert not first.done()
    finally:
        done = await first
    assert done.status == 200, done
    assert done.body["status"] == "success" and done.body["duplicate"] is False
    assert (done.body["order_id"], done.body["new_balance"]) == (order_id, "100")
    again = await purchase(api, t, player, reference)
    assert again.status == 200, again
    assert again.body["status"] == "success" and again.body["duplicate"] is True
    assert again.body["transaction_id"] == done.body["transaction_id"]
    assert again.body["new_balance"] == "100"
    # The processor's webhook, late, settles nothing a second time.
    assert await sim.release_webhooks() == 1
    details = await assert_charged_once(api, sim, t, player, order_id)
    assert details["transaction_id"] == done.body["transaction_id"]


async def test_webhook_first_then_the_late_api_answer_is_still_success(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    player, reference = email("hookfirst"), ref()
    await sim.faults(slow_next=1, slow_s=2, match="/confirm")
    first = asyncio.create_task(purchase(api, t, player, reference))
    try:
        order_id = await order_id_of(sim, reference)

        async def completed_by_webhook() -> dict[str, Any] | None:
            details = await order(api, t, order_id)
            return details if details["status"] == "completed" else None

        by_webhook = await eventually(completed_by_webhook)
        assert by_webhook is not None
        assert not first.done(), "the webhook should settle the order before the processor answers"
        assert await balance(api, t, player) == "100"
    finally:
        resp = await first
    assert resp.status == 200, resp
    assert resp.body["status"] == "success" and resp.body["duplicate"] is False
    assert resp.body["transaction_id"] == by_webhook["transaction_id"]
    assert resp.body["new_balance"] == "100"
    details = await assert_charged_once(api, sim, t, player, order_id)
    assert [h["source"] for h in details["history"] if h["to"] == "completed"] == ["webhook"]


async def test_processor_timeout_is_503_and_a_retry_charges_once(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    player, reference = email("timeout"), ref()
    posts_before = await sim.payment_intent_posts()
    await sim.faults(timeout_next=1, timeout_s=5)  # longer than INVO_PROCESSOR_TIMEOUT_S=3
    started = time.monotonic()
    first = await purchase(api, t, player, reference)
    assert_envelope(first, 503, "PROCESSOR_UNAVAILABLE")
    assert time.monotonic() - started < 5, "the payments service gives up after its own timeout"
    # Nothing charged by the call that timed out: any PaymentIntent for the reference comes from a
    # later call (the recovery loop may already have asked again: the order is in flight).
    intents = await sim.intents(reference=reference)
    later_posts = await sim.payment_intent_posts() - posts_before - 1
    assert len(intents) <= later_posts, (intents, later_posts)
    assert all(pi["status"] == "succeeded" for pi in intents)
    retry = await settle(api, t, player, reference)
    assert retry.body["new_balance"] == "100"
    await assert_charged_once(api, sim, t, player, retry.body["order_id"])


async def test_payments_killed_mid_purchase_settles_once(api: Api, sim: Sim, stack: Stack) -> None:
    t = await tenant(api)
    player, reference = email("crash"), ref()
    # The processor charges and then answers late; its webhook is held so that the order is still
    # unsettled when the payments service dies: a client retry or the recovery loop must finish it.
    await sim.faults(slow_next=1, slow_s=4, webhook_hold=True, match="/confirm")
    in_flight = asyncio.create_task(purchase(api, t, player, reference))
    try:
        order_id = await order_id_of(sim, reference)
        # On this (the main) thread, not asyncio.to_thread: see test_a_service_restarted_from_a_worker_thread_survives.
        restart_payments(stack, sig=signal.SIGKILL)
    finally:
        try:
            lost: Response | None = await in_flight
        except aiohttp.ClientError:
            lost = None
    assert lost is None or lost.status >= 500, lost
    assert (await order(api, t, order_id))["status"] == "pending_payment"
    settled = await settle(api, t, player, reference)
    assert settled.body["order_id"] == order_id
    assert settled.body["new_balance"] == "100"
    details = await assert_charged_once(api, sim, t, player, order_id)
    assert settled.body["transaction_id"] == details["transaction_id"]
    # The processor's original webhook, delivered at last, changes nothing.
    assert await sim.release_webhooks() == 1
    await assert_charged_once(api, sim, t, player, order_id)


def restart_payments(stack: Stack, *, sig: int) -> None:
    """Blocks the event loop for a second or two; the services are other processes, so nothing waits on it."""
    stack.restart("payments", sig=sig)


async def test_a_service_restarted_from_a_worker_thread_survives(api: Api, sim: Sim, stack: Stack) -> None:
    try:
        worker = threading.Thread(target=stack.restart, args=("payments",), kwargs={"sig": signal.SIGKILL})
        worker.start()
        await asyncio.to_thread(worker.join)
        proc = stack.procs["payments"]
        deadline = time.monotonic() + 2.0
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # a death, if it comes, comes within milliseconds
        assert proc.poll() is None, f"payments exited with {proc.returncode} once the thread that started it ended"
        t = await tenant(api)
        resp = await purchase(api, t, email("thread"), ref())
        assert resp.status == 200, resp
    finally:
        if stack.procs["payments"].poll() is not None:
            restart_payments(stack, sig=signal.SIGTERM)
