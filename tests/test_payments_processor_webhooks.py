"""Currency purchases through the public gateway, the processor's webhooks in: the signature is
checked, an event is handled once, and an event of an unknown type is acknowledged and ignored.
The card processor is the Stripe simulator."""

from __future__ import annotations

import time

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
    processor_event,
    send_processor_event,
    stripe_signature,
)

# -- 8. processor webhooks in -------------------------------------------------------------------------


async def test_processor_webhook_signature_and_dedupe(api: Api, stack: Stack) -> None:
    secret = stack.env["INVO_PROCESSOR_WEBHOOK_SECRET"]
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    order_id, pi = start.body["order_id"], start.body["payment_intent_id"]
    payload = processor_event(
        "payment_intent.succeeded",
        {
            "id": pi,
            "object": "payment_intent",
            "amount": 1000,
            "amount_received": 1000,
            "currency": "usd",
            "status": "succeeded",
            "metadata": {"order_id": order_id, "tenant_id": t["tenant_id"]},
        },
    )
    now = int(time.time())
    refused = {
        "missing": None,
        "empty": "",
        "garbage": "nonsense",
        "wrong secret": stripe_signature(payload, "whsec_not_the_secret"),
        "tampered": stripe_signature(payload.replace("1000", "9000"), secret),
        "older than 5 minutes": stripe_signature(payload, secret, now - 330),
    }
    for name, signature in refused.items():
        resp = await send_processor_event(api, payload, signature)
        assert resp.status == 400, (name, resp)
        assert_envelope(resp, 400, "INVALID_SIGNATURE")
    assert (await order(api, t, order_id))["status"] == "requires_action"
    assert await balance(api, t, player) == "0"

    # Signed (within the tolerance): applied once; the same event again is acknowledged as a duplicate.
    first = await send_processor_event(api, payload, stripe_signature(payload, secret, now - 60))
    assert first.status == 200, first
    assert first.body == {"received": True, "duplicate": False, "ignored": False}
    o = await order(api, t, order_id)
    assert o["status"] == "completed" and o["history"][-1]["source"] == "webhook"
    assert await balance(api, t, player) == "100"
    second = await send_processor_event(api, payload, stripe_signature(payload, secret))
    assert second.status == 200, second
    assert second.body["duplicate"] is True
    assert await balance(api, t, player) == "100"
    # confirm-payment afterwards sees the webhook's credit.
    confirmed = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
    assert confirmed.status == 200 and confirmed.body["already_processed"] is True, confirmed
    assert confirmed.body["transaction_id"] == o["transaction_id"]
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_processor_webhook_of_an_unknown_type_is_acknowledged_and_ignored(api: Api, stack: Stack) -> None:
    secret = stack.env["INVO_PROCESSOR_WEBHOOK_SECRET"]
    payload = processor_event("customer.created", {"id": "cus_test", "object": "customer"})
    first = await send_processor_event(api, payload, stripe_signature(payload, secret))
    assert first.status == 200, first
    assert first.body["received"] is True and first.body["ignored"] is True and first.body["duplicate"] is False
    again = await send_processor_event(api, payload, stripe_signature(payload, secret))
    assert again.status == 200 and again.body["duplicate"] is True, again
    # A signed body that is not an event is refused.
    junk = "not json"
    assert_envelope(await send_processor_event(api, junk, stripe_signature(junk, secret)), 400, "INVALID_EVENT")
    # A payment_intent event naming no order of ours is acknowledged too, and ignored.
    stray = processor_event(
        "payment_intent.succeeded",
        {"id": "pi_stranger", "object": "payment_intent", "status": "succeeded", "metadata": {}},
    )
    resp = await send_processor_event(api, stray, stripe_signature(stray, secret))
    assert resp.status == 200 and resp.body["ignored"] is True, resp
    await check_ledger(api)
