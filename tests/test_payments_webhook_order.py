"""Currency purchases when things go wrong, the processor's webhooks duplicated or out of order:
duplicates credit once, webhooks released newest first credit once, and a failed challenge then
a successful one is credited.

Everything goes through the public gateway and the processor simulator; the simulator's own record
(`/_sim/state`) is the proof of how many times a card was charged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import Api, eventually
from tests.payments_resilience_support import (
    CONFIRM,
    THREE_DS,
    VISA,
    Sim,
    assert_charged_once,
    email,
    order,
    purchase,
    ref,
    sim,
    tenant,
)

__all__ = ["sim"]  # the fixture, imported for this module's tests


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
