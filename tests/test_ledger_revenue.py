"""Ledger reads through the public gateway, revenue: what the tenant is owed after purchases,
with the default and with a fractional network fee.

Every test makes its own tenants; players are funded with admin credits.
"""

from __future__ import annotations

from tests.helpers import Api
from tests.ledger_reads_support import all_entries, funded, purchase

# -- 5. revenue --------------------------------------------------------------------------------


async def test_revenue_after_purchases_with_the_default_fee(api: Api) -> None:
    t = await api.create_tenant()
    assert t["tenant"]["network_fee_percentage"] == "10"
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.status == 200, resp
    assert resp.body == {
        "owed_usd": "0.00",
        "paid_out_usd": "0.00",
        "lifetime_usd": "0.00",
        "owed_units": "0",
        "paid_out_units": "0",
        "lifetime_units": "0",
        "held_usd": "0.00",
        "available_usd": "0.00",
        "returned_usd": "0.00",
        "held_units": "0",
        "available_units": "0",
        "returned_units": "0",
        "currency_name": "Gold Coins",
    }
    await funded(api, t["tenant_id"], "buyer@x.com", "50")
    for _ in range(3):
        bought = await purchase(api, t["sdk_key"], "buyer@x.com", "10")
        assert (bought["partner_amount"], bought["network_fee"]) == ("9", "1")
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.body == {
        "owed_usd": "2.70",
        "paid_out_usd": "0.00",
        "lifetime_usd": "2.70",
        "owed_units": "27",
        "paid_out_units": "0",
        "lifetime_units": "27",
        "held_usd": "0.00",
        "available_usd": "2.70",
        "returned_usd": "0.00",
        "held_units": "0",
        "available_units": "27",
        "returned_units": "0",
        "currency_name": "Gold Coins",
    }
    # Admin credits move no revenue.
    await funded(api, t["tenant_id"], "buyer@x.com", "5")
    assert (await api.get("/api/revenue", key=t["sdk_key"])).body["lifetime_units"] == "27"


async def test_revenue_with_a_fractional_fee_percentage(api: Api) -> None:
    t = await api.create_tenant(network_fee_percentage="12.5")
    assert t["tenant"]["network_fee_percentage"] == "12.5"
    await funded(api, t["tenant_id"], "buyer@x.com", "5")
    bought = await purchase(api, t["sdk_key"], "buyer@x.com", "1")
    # 12.5% of 1 is 0.125: the network's fee rounds down to 0.12, the partner keeps the rest.
    assert (bought["total"], bought["partner_amount"], bought["network_fee"]) == ("1", "0.88", "0.12")
    assert bought["new_balance"] == "4"
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.body["lifetime_units"] == "0.88"
    assert resp.body["owed_units"] == "0.88"
    assert resp.body["paid_out_units"] == "0"
    assert resp.body["lifetime_usd"] == "0.08"  # 0.88 units = $0.088, whole cents only
    fee = [e for e in await all_entries(api, t["sdk_key"]) if e["account"] == "network_fee"]
    assert [e["amount"] for e in fee] == ["0.12"]
