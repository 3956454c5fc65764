"""Currency purchases through the public gateway, 3-D Secure: a challenge then confirm-payment
credits once, whether confirm or the processor's webhook comes first, and a failed challenge fails
the order. The card processor is the Stripe simulator."""

from __future__ import annotations

from devstack.stack import Stack
from tests.helpers import Api, assert_envelope
from tests.payments_support import (
    CONFIRM,
    THREE_DS,
    balance,
    buy,
    check_ledger,
    email,
    order,
    order_reaches,
    sim,
    sim_faults,
    transitions,
)

# -- 4. 3-D Secure ----------------------------------------------------------------------------------


async def test_three_d_secure_then_confirm_credits_once(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    other = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    order_id, pi = start.body["order_id"], start.body["payment_intent_id"]
    confirm = {"payment_intent_id": pi, "order_id": order_id}

    early = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
    assert_envelope(early, 409, "PAYMENT_REQUIRES_ACTION")
    foreign = await api.post(CONFIRM, key=other["sdk_key"], json=confirm)
    assert_envelope(foreign, 404, "ORDER_NOT_FOUND")
    unknown = await api.post(CONFIRM, key=t["sdk_key"], json={**confirm, "order_id": "ord_" + "0" * 26})
    assert_envelope(unknown, 404, "ORDER_NOT_FOUND")
    mismatch = await api.post(CONFIRM, key=t["sdk_key"], json={**confirm, "payment_intent_id": "pi_not_this_one"})
    assert_envelope(mismatch, 400, "PAYMENT_INTENT_MISMATCH")
    assert (await order(api, t, order_id))["status"] == "requires_action"
    assert await balance(api, t, player) == "0"

    await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
    done = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
    assert done.status == 200, done
    # The simulator's payment_intent.succeeded webhook may have credited first: both are valid.
    assert set(done.body) == {"status", "transaction_id", "order_id", "new_balance", "already_processed"}
    assert done.body["status"] == "success" and done.body["order_id"] == order_id
    assert done.body["transaction_id"].startswith("txn_")
    assert done.body["new_balance"] == "100"
    assert isinstance(done.body["already_processed"], bool)

    again = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
    assert again.status == 200, again
    assert again.body["already_processed"] is True
    assert again.body["transaction_id"] == done.body["transaction_id"]
    assert again.body["new_balance"] == "100"
    # Let the webhook land (it is the other settler), then the balance is still credited once.
    o = await order_reaches(api, t, order_id, "completed")
    assert o["transaction_id"] == done.body["transaction_id"]
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_three_d_secure_confirm_before_webhook_and_webhook_after(api: Api, stack: Stack) -> None:
    """Held webhook: confirm-payment settles the order (already_processed false), then the late
    payment_intent.succeeded changes nothing."""
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    confirm = {"payment_intent_id": start.body["payment_intent_id"], "order_id": start.body["order_id"]}
    async with sim_faults(api, stack, webhook_hold=True):
        await sim(api, stack, "three_d_secure", {"payment_intent": confirm["payment_intent_id"], "result": "succeed"})
        done = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
        assert done.status == 200, done
        assert done.body["already_processed"] is False and done.body["new_balance"] == "100"
        released = await sim(api, stack, "release_webhooks")
        assert released["released"] == 1
    again = await api.post(CONFIRM, key=t["sdk_key"], json=confirm)
    assert again.status == 200 and again.body["already_processed"] is True, again
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_failed_challenge_fails_the_order(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    order_id, pi = start.body["order_id"], start.body["payment_intent_id"]
    await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "fail"})
    o = await order_reaches(api, t, order_id, "failed")
    assert transitions(o) == [
        (None, "pending_payment"),
        ("pending_payment", "requires_action"),
        ("requires_action", "failed"),
    ]
    assert o["transaction_id"] is None and o["completed_at"] is None
    resp = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
    assert resp.status == 402, resp
    assert resp.body["status"] == "error" and resp.body["error_code"] == "AUTHENTICATION_FAILED"
    assert await balance(api, t, player) == "0"
    assert (await order(api, t, order_id))["status"] == "failed"
