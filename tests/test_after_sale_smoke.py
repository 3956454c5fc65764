"""The after-sale paths end to end, one each: a refund, a dispute lost, an early fraud warning."""

from __future__ import annotations

from typing import Any

from devstack.stack import Stack
from tests.helpers import Api, eventually
from tests.payments_support import balance, buy, check_ledger, email, order, sim


async def _paid(api: Api, t: dict[str, Any], card: str = "pm_card_visa") -> tuple[str, dict[str, Any]]:
    player = email()
    resp = await buy(api, t, player, payment_method_id=card)
    assert resp.status == 200 and resp.body["status"] == "success", resp
    return player, resp.body


async def test_a_refund_in_two_parts_debits_the_whole_currency(api: Api) -> None:
    t = await api.create_tenant()
    player, paid = await _paid(api, t)
    path = f"/admin/orders/{paid['order_id']}/refunds"
    first = await api.post(path, admin=True, json={"usd_amount": "2.50", "idempotency_key": "k1"})
    assert first.status == 201, first
    assert first.body["refund"]["status"] == "succeeded"
    assert first.body["refund"]["currency_debited"] == "25"
    assert first.body["order"]["status"] == "completed"
    assert await balance(api, t, player) == "75"
    again = await api.post(path, admin=True, json={"usd_amount": "2.50", "idempotency_key": "k1"})
    assert again.status == 200 and again.body["duplicate"] is True, again
    rest = await api.post(path, admin=True, json={"idempotency_key": "k2"})
    assert rest.status == 201, rest
    assert rest.body["refund"]["usd_amount"] == "7.50"
    assert rest.body["order"]["status"] == "refunded"
    assert await balance(api, t, player) == "0"
    over = await api.post(path, admin=True, json={"usd_amount": "0.01", "idempotency_key": "k3"})
    assert over.status == 409, over  # refunded: nothing left
    await check_ledger(api)


async def test_a_dispute_lost_claws_back(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, paid = await _paid(api, t, "pm_card_createDispute")

    async def frozen() -> dict[str, Any]:
        o = await order(api, t, paid["order_id"])
        return o if o["disputes"] and o["disputes"][0]["status"] else {}

    o = await eventually(frozen, timeout_s=15)
    assert o["disputes"][0]["currency_frozen"] == "100", o
    spend = await api.post(
        "/api/item-purchases/purchase-item",
        key=t["sdk_key"],
        json={"player_email": player, "item_id": "sword", "item_name": "Sword", "price": "1", "idempotency_key": "s1"},
    )
    assert spend.status == 402, spend
    await sim(api, stack, "dispute", {"payment_intent": o["payment_intent_id"], "close": "lost"})

    async def lost() -> dict[str, Any]:
        got = await order(api, t, paid["order_id"])
        return got if got["status"] == "disputed_lost" else {}

    await eventually(lost, timeout_s=15)
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_an_early_fraud_warning_is_recorded(api: Api) -> None:
    t = await api.create_tenant()
    _, paid = await _paid(api, t, "pm_card_radarEarlyFraudWarning")

    async def warned() -> dict[str, Any]:
        o = await order(api, t, paid["order_id"])
        return o if o["fraud_warnings"] else {}

    o = await eventually(warned, timeout_s=15)
    assert o["fraud_warnings"][0]["recommendation"] == "consider_refund"
