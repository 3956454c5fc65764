"""Currency purchases through the public gateway, what an order shows: order details and their
transition history (plain, 3-D Secure, declined), and purchase.completed / purchase.failed on
JetStream once per order. The card processor is the Stripe simulator."""

from __future__ import annotations

from devstack.stack import Stack
from tests.helpers import Api, assert_envelope
from tests.payments_support import (
    CONFIRM,
    DECLINED,
    DETAILS,
    THREE_DS,
    Events,
    balance,
    buy,
    check_ledger,
    details,
    email,
    order,
    order_reaches,
    ref,
    sim,
    sim_faults,
    transitions,
)

# -- 5. order details -------------------------------------------------------------------------------


async def test_order_details_of_a_plain_purchase(api: Api) -> None:
    t = await api.create_tenant(currency_name="Gems")
    other = await api.create_tenant()
    player = email()
    reference = ref()
    resp = await buy(api, t, player, reference, metadata={"coin_pack": "starter"})
    assert resp.status == 200, resp
    o = await order(api, t, resp.body["order_id"])
    assert o["order_id"] == resp.body["order_id"] and o["status"] == "completed"
    assert o["purchase_reference"] == reference and o["player_email"] == player
    assert (o["usd_amount"], o["currency_amount"], o["currency_name"]) == ("10.00", "100", "Gems")
    assert o["transaction_id"] == resp.body["transaction_id"]
    assert o["identity_id"] == resp.body["identity_id"]
    assert o["payment_intent_id"].startswith("pi_")
    assert o["metadata"] == {"coin_pack": "starter"}
    assert o["failure_code"] is None and o["decline_code"] is None
    assert o["created_at"] <= o["completed_at"] <= o["updated_at"]
    assert transitions(o) == [(None, "pending_payment"), ("pending_payment", "completed")]
    ats = [h["at"] for h in o["history"]]
    assert ats == sorted(ats)
    assert o["created_at"] <= ats[0] and ats[-1] <= o["updated_at"]

    assert_envelope(await details(api, other, o["order_id"]), 404, "ORDER_NOT_FOUND")
    assert_envelope(await details(api, t, "ord_" + "0" * 26), 404, "ORDER_NOT_FOUND")
    assert_envelope(await details(api, t, "nonsense"), 404, "ORDER_NOT_FOUND")
    assert_envelope(await api.get(DETAILS, key=t["sdk_key"]), 400, "MISSING_PARAMETER")
    await check_ledger(api)


async def test_order_details_of_a_three_d_secure_purchase(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    order_id = start.body["order_id"]
    o = await order(api, t, order_id)
    assert o["status"] == "requires_action" and o["completed_at"] is None
    assert o["payment_intent_id"] == start.body["payment_intent_id"]
    await sim(api, stack, "three_d_secure", {"payment_intent": start.body["payment_intent_id"], "result": "succeed"})
    o = await order_reaches(api, t, order_id, "completed")
    assert transitions(o) == [
        (None, "pending_payment"),
        ("pending_payment", "requires_action"),
        ("requires_action", "completed"),
    ]
    assert o["history"][-1]["source"] == "webhook"
    assert (o["usd_amount"], o["currency_amount"]) == ("10.00", "100")
    assert o["completed_at"] is not None and o["transaction_id"].startswith("txn_")
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_order_details_of_a_declined_purchase(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    resp = await buy(api, t, player, payment_method_id=DECLINED)
    assert_envelope(resp, 402, "CARD_DECLINED")
    order_id = resp.body["order_id"]
    o = await order(api, t, order_id)
    assert o["status"] == "failed"
    assert transitions(o) == [(None, "pending_payment"), ("pending_payment", "failed")]
    assert (o["failure_code"], o["decline_code"]) == ("card_declined", "generic_decline")
    assert o["failure_message"]
    assert o["transaction_id"] is None and o["completed_at"] is None
    assert await balance(api, t, player) == "0"


# -- 6. events ----------------------------------------------------------------------------------------


async def test_purchase_events_reach_jetstream_once_per_order(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(currency_name="Gold Coins")
    player = email()
    metadata = {"your_user_id": "u_42", "coin_pack": "starter"}
    # Webhooks are held and released after the API settled each order: both paths settle every one.
    async with sim_faults(api, stack, webhook_hold=True):
        plain = await buy(api, t, player, metadata=metadata)
        assert plain.status == 200, plain
        declined = await buy(api, t, player, payment_method_id=DECLINED)
        assert_envelope(declined, 402, "CARD_DECLINED")
        tds = await buy(api, t, player, payment_method_id=THREE_DS)
        assert tds.status == 200, tds
        pi = tds.body["payment_intent_id"]
        await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
        confirmed = await api.post(
            CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": tds.body["order_id"]}
        )
        assert confirmed.status == 200 and confirmed.body["already_processed"] is False, confirmed
        released = await sim(api, stack, "release_webhooks")
        assert released["released"] == 3
    # A later purchase is the sentinel: anything the webhooks above emitted was written before it.
    sentinel = await buy(api, t, player)
    assert sentinel.status == 200, sentinel
    events = Events(stack, t["tenant_id"])
    await events.collect_until(sentinel.body["order_id"], "purchase.completed")

    completed = events.of(plain.body["order_id"], "purchase.completed")
    assert len(completed) == 1, completed
    event = completed[0]
    assert event["event_type"] == "purchase.completed" and event["tenant_id"] == t["tenant_id"]
    assert event["event_id"] and event["created_at"]
    assert event["data"] == {
        "transaction_id": plain.body["transaction_id"],
        "order_id": plain.body["order_id"],
        "player_email": player,
        "identity_id": plain.body["identity_id"],
        "usd_amount": "10.00",
        "currency_amount": "100",
        "currency_name": "Gold Coins",
        "metadata": metadata,
        # No debt to repay: all of it is the player's to spend.
        "debt_repaid": "0",
        "currency_credited": "100",
    }
    tds_completed = events.of(tds.body["order_id"], "purchase.completed")
    assert len(tds_completed) == 1, tds_completed
    assert tds_completed[0]["data"]["transaction_id"] == confirmed.body["transaction_id"]
    assert tds_completed[0]["data"]["metadata"] == {}

    failed = events.of(declined.body["order_id"], "purchase.failed")
    assert len(failed) == 1, failed
    data = failed[0]["data"]
    assert {"payment_intent_id", "order_id", "player_email", "usd_amount", "failure_code", "failure_message"} <= set(
        data
    )
    assert data["order_id"] == declined.body["order_id"]
    assert data["payment_intent_id"].startswith("pi_")
    assert data["payment_intent_id"] == (await order(api, t, declined.body["order_id"]))["payment_intent_id"]
    assert (data["player_email"], data["usd_amount"]) == (player, "10.00")
    assert (data["failure_code"], data["failure_message"]) == ("card_declined", "Your card was declined.")
    assert not events.of(declined.body["order_id"], "purchase.completed")
    for o in (plain, tds, sentinel):
        assert not events.of(o.body["order_id"], "purchase.failed")
    assert await balance(api, t, player) == "300"
    await check_ledger(api)
