"""Currency purchases when things go wrong: a lost HTTP answer, a processor that is slow, times out or
fails, a payments service killed mid-purchase, concurrent purchases against the spending caps,
velocity limits, the circuit breaker, and processor webhooks duplicated or delivered out of order.

Everything goes through the public gateway and the processor simulator; the simulator's own record
(`/_sim/state`) is the proof of how many times a card was charged.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from services.common.stack import Stack
from tests.helpers import Api, Response, assert_envelope, eventually

PURCHASE = "/api/currency-purchases/purchase-currency"
CONFIRM = "/api/currency-purchases/confirm-payment"
ORDER = "/api/currency-purchases/order-details"
VISA = "pm_card_visa"
DECLINED = "pm_card_chargeDeclined"
THREE_DS = "pm_card_authenticationRequired"
CAPS_50_A_DAY = {"hourly_usd": "1000.00", "daily_usd": "50.00", "monthly_usd": "1000.00"}


# -- the processor simulator ------------------------------------------------------------------


class Sim:
    """The simulator's test controls, and its REST API where a test plays the client-side SDK."""

    def __init__(self, base: str, secret_key: str) -> None:
        self.base = base
        self.secret_key = secret_key
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        await self.session.close()

    async def control(self, action: str, body: dict[str, Any] | None = None) -> Any:
        async with self.session.post(f"{self.base}/_sim/{action}", json=body or {}) as resp:
            payload = await resp.json()
            assert resp.status == 200, (action, resp.status, payload)
            return payload

    async def faults(self, **faults: Any) -> None:
        await self.control("faults", faults)

    async def reset(self) -> None:
        await self.control("reset")

    async def state(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/_sim/state") as resp:
            assert resp.status == 200
            return dict(await resp.json())

    async def intents(self, *, order_id: str | None = None, reference: str | None = None) -> list[dict[str, Any]]:
        """The PaymentIntents created for one order (or one purchase_reference)."""
        found = []
        for pi in (await self.state())["intents"]:
            meta = pi.get("metadata") or {}
            if order_id is not None and meta.get("order_id") == order_id:
                found.append(pi)
            elif reference is not None and meta.get("purchase_reference") == reference:
                found.append(pi)
        return found

    async def payment_intent_posts(self) -> int:
        return sum(
            1 for method, path in (await self.state())["calls"] if (method, path) == ("POST", "/v1/payment_intents")
        )

    async def three_d_secure(self, payment_intent: str, result: str) -> None:
        await self.control("three_d_secure", {"payment_intent": payment_intent, "result": result})

    async def release_webhooks(self, order: str = "reverse") -> int:
        return int((await self.control("release_webhooks", {"order": order}))["released"])

    async def client_confirm(self, payment_intent: str, payment_method: str) -> dict[str, Any]:
        """What the card collector's client SDK does when the player tries again on the same intent."""
        async with self.session.post(
            f"{self.base}/v1/payment_intents/{payment_intent}/confirm",
            data={"payment_method": payment_method},
            headers={"Authorization": f"Bearer {self.secret_key}"},
        ) as resp:
            body = dict(await resp.json())
            assert resp.status == 200, body
            return body


@pytest.fixture
async def sim(stack: Stack) -> AsyncIterator[Sim]:
    s = Sim(stack.env["INVO_PROCESSOR_API_BASE"], stack.env["INVO_PROCESSOR_SECRET_KEY"])
    try:
        await s.reset()
        yield s
    finally:
        try:
            await s.reset()
        finally:
            await s.close()


# -- helpers ----------------------------------------------------------------------------------


def ref() -> str:
    return str(uuid.uuid4())


def email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


async def tenant(api: Api, **settings: Any) -> dict[str, Any]:
    return await api.create_tenant(rate_limit_per_second=1000, **settings)


async def purchase(
    api: Api, t: dict[str, Any], player: str, reference: str, usd: str = "10.00", pm: str = VISA
) -> Response:
    return await api.post(
        PURCHASE,
        key=t["sdk_key"],
        json={"player_email": player, "usd_amount": usd, "payment_method_id": pm, "purchase_reference": reference},
    )


async def balance(api: Api, t: dict[str, Any], player: str) -> str:
    resp = await api.get(f"/api/players/balance?player_email={player}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return str(resp.body["balance"])


async def order(api: Api, t: dict[str, Any], order_id: str) -> dict[str, Any]:
    resp = await api.get(f"{ORDER}?order_id={order_id}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return dict(resp.body)


async def order_id_of(sim: Sim, reference: str) -> str:
    """The order behind a purchase_reference, read from the PaymentIntent's metadata."""
    intents = await eventually(lambda: sim.intents(reference=reference))
    return str(intents[0]["metadata"]["order_id"])


async def check_ledger(api: Api) -> None:
    check = await api.get("/admin/ledger/check", admin=True)
    assert check.status == 200, check
    assert check.body["ok"] is True, check.body
    assert check.body["total_balance"] == "0", check.body


async def assert_charged_once(
    api: Api, sim: Sim, t: dict[str, Any], player: str, order_id: str, units: str = "100"
) -> dict[str, Any]:
    """One PaymentIntent for the order at the processor, succeeded; one credit; the order completed."""
    intents = await sim.intents(order_id=order_id)
    assert len(intents) == 1, intents
    assert intents[0]["status"] == "succeeded", intents[0]
    assert await balance(api, t, player) == units
    details = await order(api, t, order_id)
    assert details["status"] == "completed", details
    assert details["payment_intent_id"] == intents[0]["id"]
    assert details["transaction_id"].startswith("txn_")
    assert [h["to"] for h in details["history"]].count("completed") == 1, details["history"]
    await check_ledger(api)
    return details


async def settle(api: Api, t: dict[str, Any], player: str, reference: str, usd: str = "10.00") -> Response:
    """Retry a purchase with the same reference until it is no longer in flight (the client's loop)."""

    async def attempt() -> Response | None:
        resp = await purchase(api, t, player, reference, usd)
        assert resp.status in (200, 409, 503), resp
        return resp if resp.status == 200 else None

    resp = await eventually(attempt, timeout_s=20, interval_s=0.25)
    assert resp is not None and resp.body["status"] == "success", resp
    return resp


# -- 1. a purchase whose HTTP answer is lost charges once and credits once --------------------


async def test_retry_while_the_processor_is_slow_is_409_pending_then_the_first_result(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    player, reference = email("slow"), ref()
    # Webhooks are held so that only the API call can settle the order: the retry must find it in flight.
    await sim.faults(slow_next=1, slow_s=2, webhook_hold=True)
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
    await sim.faults(slow_next=1, slow_s=2)
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
    await sim.faults(slow_next=1, slow_s=4, webhook_hold=True)
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


# -- 2. concurrent purchases against the spending caps ----------------------------------------


async def test_concurrent_purchases_never_exceed_the_daily_cap(api: Api, sim: Sim) -> None:
    t = await tenant(api, spending_caps=CAPS_50_A_DAY)
    player = email("cap")
    results = await asyncio.gather(*(purchase(api, t, player, ref(), "7.00") for _ in range(10)))
    ok = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status != 200]
    assert len(ok) == 7 and len(refused) == 3, results
    assert all(r.body["status"] == "success" for r in ok)
    for r in refused:
        assert_envelope(r, 429, "SPENDING_LIMIT_EXCEEDED")
        assert r.body["error"] == "spending_limit_exceeded"
        assert r.body["limit"] == "daily" and "daily" in r.body["message"], r.body
    assert await balance(api, t, player) == "490"
    over = await purchase(api, t, player, ref(), "1.01")
    assert_envelope(over, 429, "SPENDING_LIMIT_EXCEEDED")
    assert over.body["limit"] == "daily"

    # A declined card and an abandoned 3-D Secure challenge for the last dollar leave it available.
    declined = await purchase(api, t, player, ref(), "1.00", pm=DECLINED)
    assert_envelope(declined, 402, "CARD_DECLINED")
    challenge = await purchase(api, t, player, ref(), "1.00", pm=THREE_DS)
    assert challenge.status == 200 and challenge.body["status"] == "requires_action", challenge
    await sim.three_d_secure(challenge.body["payment_intent_id"], "fail")

    async def abandoned() -> bool:
        return (await order(api, t, challenge.body["order_id"]))["status"] == "failed"

    await eventually(abandoned)
    last = await purchase(api, t, player, ref(), "1.00")
    assert last.status == 200 and last.body["new_balance"] == "500", last
    assert await balance(api, t, player) == "500"
    await check_ledger(api)


async def test_twenty_concurrent_purchases_by_one_player_never_exceed_the_daily_cap(api: Api, sim: Sim) -> None:
    """The acceptance case as written: 20 at once, together $140 against a $50 daily cap. Refused
    purchases create no order, so they do not count as attempts either: all 13 are cap refusals."""
    t = await tenant(api, spending_caps=CAPS_50_A_DAY)
    player = email("cap20")
    results = await asyncio.gather(*(purchase(api, t, player, ref(), "7.00") for _ in range(20)))
    assert sorted(r.status for r in results) == [200] * 7 + [429] * 13, results
    for r in results:
        if r.status == 429:
            assert_envelope(r, 429, "SPENDING_LIMIT_EXCEEDED")
    # The credited total never exceeds the cap: $49 of $50, 490 units.
    assert await balance(api, t, player) == "490"
    await check_ledger(api)


async def test_two_players_racing_each_stay_under_their_own_cap(api: Api, sim: Sim) -> None:
    t = await tenant(api, spending_caps=CAPS_50_A_DAY)
    players = [email("capa"), email("capb")]
    results = await asyncio.gather(*(purchase(api, t, p, ref(), "7.00") for p in players for _ in range(10)))
    for i, p in enumerate(players):
        mine = results[i * 10 : (i + 1) * 10]
        assert sorted(r.status for r in mine) == [200] * 7 + [429] * 3, mine
        assert all(r.body["limit"] == "daily" for r in mine if r.status == 429)
        assert await balance(api, t, p) == "490"
    await check_ledger(api)


# -- 3. velocity ------------------------------------------------------------------------------


async def test_velocity_limits_attempts_and_declines_per_player(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    busy, decliner, other = email("busy"), email("decliner"), email("other")
    refs = [ref() for _ in range(10)]
    first = await asyncio.gather(*(purchase(api, t, busy, r, "1.00") for r in refs))
    assert [r.status for r in first] == [200] * 10, first
    eleventh = await purchase(api, t, busy, ref(), "1.00")
    assert_envelope(eleventh, 429, "VELOCITY_LIMIT_EXCEEDED")
    assert eleventh.body["error"] == "velocity_limit_exceeded"
    assert int(eleventh.headers["Retry-After"]) > 0
    # A retry of an attempt already made is not a new attempt.
    replay = await purchase(api, t, busy, refs[0], "1.00")
    assert replay.status == 200 and replay.body["duplicate"] is True, replay
    assert await balance(api, t, busy) == "100"

    for _ in range(5):
        declined = await purchase(api, t, decliner, ref(), pm=DECLINED)
        assert_envelope(declined, 402, "CARD_DECLINED")
        assert declined.body["decline_code"] == "generic_decline"
    cooling = await purchase(api, t, decliner, ref())  # a good card, but the player is cooling down
    assert_envelope(cooling, 429, "TOO_MANY_DECLINES")
    assert int(cooling.headers["Retry-After"]) > 60
    assert await balance(api, t, decliner) == "0"

    fine = await purchase(api, t, other, ref())
    assert fine.status == 200 and fine.body["new_balance"] == "100", fine
    await check_ledger(api)


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


# -- 5. processor webhooks duplicated or out of order -----------------------------------------


async def test_duplicated_webhooks_credit_once(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    card_player, sca_player = email("dup"), email("dup3ds")
    sent_before = len((await sim.state())["sent_webhooks"])
    await sim.faults(webhook_duplicate=True)

    resp = await purchase(api, t, card_player, ref())
    assert resp.status == 200 and resp.body["new_balance"] == "100", resp

    async def both_delivered() -> list[dict[str, Any]] | None:
        sent = (await sim.state())["sent_webhooks"][sent_before:]
        ok = [w for w in sent if w["type"] == "payment_intent.succeeded" and w["status"] == 200]
        return ok if len(ok) >= 2 else None

    delivered = await eventually(both_delivered)
    assert delivered is not None
    assert len({w["id"] for w in delivered}) == 1, delivered
    await assert_charged_once(api, sim, t, card_player, resp.body["order_id"])

    # 3-D Secure: the two webhook copies race three confirm-payment calls from the client.
    challenge = await purchase(api, t, sca_player, ref(), pm=THREE_DS)
    assert challenge.status == 200 and challenge.body["status"] == "requires_action", challenge
    pi, order_id = challenge.body["payment_intent_id"], challenge.body["order_id"]
    sent_before = len((await sim.state())["sent_webhooks"])
    await sim.three_d_secure(pi, "succeed")
    confirms = await asyncio.gather(
        *(api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id}) for _ in range(3))
    )
    assert [c.status for c in confirms] == [200] * 3, confirms
    assert len({c.body["transaction_id"] for c in confirms}) == 1
    assert sum(1 for c in confirms if c.body["already_processed"] is False) <= 1
    await eventually(both_delivered)  # both copies of this intent's webhook have been applied too
    await assert_charged_once(api, sim, t, sca_player, order_id)


async def test_webhooks_released_newest_first_credit_once(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    player, reference = email("ooo"), ref()
    await sim.faults(webhook_hold=True)
    challenge = await purchase(api, t, player, reference, pm=THREE_DS)
    assert challenge.status == 200 and challenge.body["status"] == "requires_action", challenge
    pi, order_id = challenge.body["payment_intent_id"], challenge.body["order_id"]
    # The cardholder fails the first challenge (payment_failed, held), tries again on the same
    # PaymentIntent and passes (succeeded, held).
    await sim.three_d_secure(pi, "fail")
    again = await sim.client_confirm(pi, THREE_DS)
    assert again["status"] == "requires_action"
    await sim.three_d_secure(pi, "succeed")
    assert (await order(api, t, order_id))["status"] == "requires_action"
    # Newest first: succeeded, then the stale payment_failed, which must not undo the completion.
    assert await sim.release_webhooks() == 2
    details = await assert_charged_once(api, sim, t, player, order_id)
    assert "failed" not in [h["to"] for h in details["history"]]
    assert [h["source"] for h in details["history"] if h["to"] == "completed"] == ["webhook"]
    confirm = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
    assert confirm.status == 200, confirm
    assert confirm.body["already_processed"] is True
    assert confirm.body["transaction_id"] == details["transaction_id"]
    replay = await purchase(api, t, player, reference, pm=THREE_DS)
    assert replay.status == 200 and replay.body["duplicate"] is True, replay
    assert replay.body["transaction_id"] == details["transaction_id"]
    await assert_charged_once(api, sim, t, player, order_id)


async def test_a_failed_challenge_then_a_successful_one_is_credited(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    player = email("retry3ds")
    challenge = await purchase(api, t, player, ref(), pm=THREE_DS)
    assert challenge.status == 200 and challenge.body["status"] == "requires_action", challenge
    pi, order_id = challenge.body["payment_intent_id"], challenge.body["order_id"]
    await sim.three_d_secure(pi, "fail")

    async def failed_seen() -> bool:
        return (await order(api, t, order_id))["status"] == "failed"

    await eventually(failed_seen)
    # Stripe leaves the PaymentIntent in requires_payment_method: the client SDK may confirm it
    # again (the seed's "retry" prompt), and this time the player is charged. Then the seed's step 3.
    await sim.client_confirm(pi, VISA)
    assert [i["status"] for i in await sim.intents(order_id=order_id)] == ["succeeded"]
    confirm = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
    assert confirm.status == 200 and confirm.body["status"] == "success", confirm
    await assert_charged_once(api, sim, t, player, order_id)
