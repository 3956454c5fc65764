"""Currency purchases through the public gateway, spending caps: a purchase over a cap is a 429
naming it, a failed 3-D Secure leaves the cap untouched, and concurrent purchases never exceed it.
The card processor is the Stripe simulator."""

from __future__ import annotations

import asyncio

import pytest

from devstack.stack import Stack
from tests.helpers import Api, assert_envelope
from tests.payments_support import DECLINED, THREE_DS, balance, buy, check_ledger, email, order_reaches, sim

# -- 9. spending limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["hourly", "daily", "monthly"])
async def test_spending_cap_is_429_naming_the_cap(api: Api, period: str) -> None:
    t = await api.create_tenant(spending_caps={f"{period}_usd": "15.00"})
    player = email()
    # A declined card first: it does not consume the cap.
    declined = await buy(api, t, player, payment_method_id=DECLINED)
    assert_envelope(declined, 402, "CARD_DECLINED")
    ok = await buy(api, t, player)
    assert ok.status == 200 and ok.body["new_balance"] == "100", ok
    over = await buy(api, t, player)
    assert_envelope(over, 429, "SPENDING_LIMIT_EXCEEDED")
    assert over.body["error"] == "spending_limit_exceeded"
    assert period in over.body["message"]
    assert "15.00" in over.body["message"]
    # Within what is left is still fine; the refused purchase reserved nothing.
    rest = await buy(api, t, player, usd_amount="5.00")
    assert rest.status == 200 and rest.body["new_balance"] == "150", rest
    # Another player of the same tenant has a cap of their own.
    assert (await buy(api, t, email())).status == 200
    assert await balance(api, t, player) == "150"
    await check_ledger(api)


async def test_failed_three_d_secure_leaves_the_cap_untouched(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(spending_caps={"hourly_usd": "15.00"})
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    await sim(api, stack, "three_d_secure", {"payment_intent": start.body["payment_intent_id"], "result": "fail"})
    await order_reaches(api, t, start.body["order_id"], "failed")
    ok = await buy(api, t, player)
    assert ok.status == 200 and ok.body["new_balance"] == "100", ok
    await check_ledger(api)


async def test_concurrent_purchases_never_exceed_the_cap(api: Api) -> None:
    t = await api.create_tenant(spending_caps={"hourly_usd": "25.00"}, rate_limit_per_second=1000)
    player = email()
    results = await asyncio.gather(*(buy(api, t, player) for _ in range(6)))
    assert sorted(r.status for r in results) == [200, 200, 429, 429, 429, 429], results
    for r in results:
        if r.status == 429:
            assert r.body["error"] == "spending_limit_exceeded" and "hourly" in r.body["message"]
    assert await balance(api, t, player) == "200"
    await check_ledger(api)
