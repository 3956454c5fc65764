"""POST /api/item-purchases/purchase-item: the contract, the split, idempotency, concurrency,
and the item.purchased event reaching JetStream through the outbox."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest

from devstack.stack import Stack
from services.common import money
from tests.helpers import Api, assert_envelope, eventually

PURCHASE = "/api/item-purchases/purchase-item"


async def fund(api: Api, tenant_id: str, email: str, amount: str) -> None:
    resp = await api.credit(tenant_id, email, amount)
    assert resp.status == 200, resp


def body(key: str, **kw: Any) -> dict[str, Any]:
    return {
        "player_email": "player@example.com",
        "item_id": "sword_01",
        "item_name": "Iron Sword",
        "price": "10",
        "idempotency_key": key,
        **kw,
    }


async def balance(api: Api, key: str, email: str = "player@example.com") -> str:
    resp = await api.get(f"/api/players/balance?player_email={email}", key=key)
    assert resp.status == 200, resp
    return str(resp.body["balance"])


async def check_ledger(api: Api) -> None:
    check = await api.get("/admin/ledger/check", admin=True)
    assert check.status == 200
    assert check.body["ok"] is True, check.body
    assert check.body["total_balance"] == "0"


async def test_purchase_splits_the_price_and_answers_the_contract(api: Api) -> None:
    t = await api.create_tenant(currency_name="Gold Coins")
    await fund(api, t["tenant_id"], "player@example.com", "100")
    resp = await api.post(PURCHASE, key=t["sdk_key"], json=body("k1", quantity=2, metadata={"order": "o1"}))
    assert resp.status == 200, resp
    b = resp.body
    assert b["status"] == "success" and b["duplicate"] is False
    assert b["transaction_id"].startswith("txn_")
    assert (b["price"], b["total"], b["new_balance"]) == ("10", "20", "80")
    assert (b["partner_amount"], b["network_fee"]) == ("18", "2")
    assert b["currency_name"] == "Gold Coins" and b["quantity"] == 2
    assert await balance(api, t["sdk_key"]) == "80"
    revenue = (await api.get("/api/revenue", key=t["sdk_key"])).body
    assert (revenue["owed_units"], revenue["owed_usd"]) == ("18", "1.80")
    await check_ledger(api)


async def test_replay_answers_the_first_result_and_moves_nothing(api: Api) -> None:
    t = await api.create_tenant()
    await fund(api, t["tenant_id"], "player@example.com", "30")
    first = await api.post(PURCHASE, key=t["sdk_key"], json=body("same"))
    again = await api.post(PURCHASE, key=t["sdk_key"], json=body("same"))
    assert again.status == 200 and again.body["duplicate"] is True
    assert again.body["transaction_id"] == first.body["transaction_id"]
    assert again.body["new_balance"] == first.body["new_balance"] == "20"
    assert await balance(api, t["sdk_key"]) == "20"
    # The same key with a different request is refused and changes nothing.
    other = await api.post(PURCHASE, key=t["sdk_key"], json=body("same", price="5"))
    assert_envelope(other, 400, "IDEMPOTENCY_KEY_REUSED")
    assert await balance(api, t["sdk_key"]) == "20"


async def test_keys_are_unique_per_tenant_not_globally(api: Api) -> None:
    a = await api.create_tenant()
    b = await api.create_tenant()
    for t in (a, b):
        await fund(api, t["tenant_id"], "player@example.com", "10")
    ra = await api.post(PURCHASE, key=a["sdk_key"], json=body("shared-key", price="1"))
    rb = await api.post(PURCHASE, key=b["sdk_key"], json=body("shared-key", price="2"))
    assert ra.status == rb.status == 200
    assert ra.body["duplicate"] is rb.body["duplicate"] is False
    assert ra.body["transaction_id"] != rb.body["transaction_id"]
    assert (await balance(api, a["sdk_key"]), await balance(api, b["sdk_key"])) == ("9", "8")


async def test_insufficient_balance_is_402_and_changes_nothing(api: Api) -> None:
    t = await api.create_tenant()
    await fund(api, t["tenant_id"], "player@example.com", "5")
    resp = await api.post(PURCHASE, key=t["sdk_key"], json=body("too-much", price="5.01"))
    assert_envelope(resp, 402, "INSUFFICIENT_BALANCE")
    assert await balance(api, t["sdk_key"]) == "5"
    # Nothing was recorded for the key: after a top-up the same key goes through.
    await fund(api, t["tenant_id"], "player@example.com", "1")
    ok = await api.post(PURCHASE, key=t["sdk_key"], json=body("too-much", price="5.01"))
    assert ok.status == 200 and ok.body["new_balance"] == "0.99"
    revenue = (await api.get("/api/revenue", key=t["sdk_key"])).body
    # The fee, 10% of 5.01 = 0.501, is rounded down to 0.50: the partner earns 4.51.
    assert revenue["owed_units"] == "4.51"
    await check_ledger(api)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"idempotency_key": None}, "MISSING_IDEMPOTENCY_KEY"),
        ({"idempotency_key": "k" * 256}, "INVALID_IDEMPOTENCY_KEY"),
        ({"idempotency_key": ""}, "INVALID_IDEMPOTENCY_KEY"),
        ({"idempotency_key": 42}, "INVALID_IDEMPOTENCY_KEY"),
        ({"price": "0"}, "INVALID_PARAMETER"),
        ({"price": "-1"}, "INVALID_PARAMETER"),
        ({"price": "1.001"}, "INVALID_PARAMETER"),
        ({"price": "abc"}, "INVALID_PARAMETER"),
        ({"price": None}, "MISSING_PARAMETER"),
        ({"price": 1.5}, None),  # a JSON number is parsed exactly: allowed
        ({"quantity": 0}, "INVALID_PARAMETER"),
        ({"quantity": 1001}, "INVALID_PARAMETER"),
        ({"quantity": "2"}, "INVALID_PARAMETER"),
        ({"player_email": "not-an-email"}, "INVALID_PLAYER_EMAIL"),
        ({"player_email": None}, "MISSING_PARAMETER"),
        ({"item_id": None}, "MISSING_PARAMETER"),
        ({"item_name": "x" * 256}, "INVALID_PARAMETER"),
        ({"metadata": "text"}, "INVALID_PARAMETER"),
        ({"metadata": {f"k{i}": i for i in range(51)}}, "INVALID_PARAMETER"),
        ({"metadata": {"k": "v" * 9000}}, "INVALID_PARAMETER"),
        ({"surprise": 1}, "UNKNOWN_FIELD"),
    ],
)
async def test_bad_input_is_400_and_changes_nothing(api: Api, change: dict[str, Any], code: str | None) -> None:
    t = await api.create_tenant()
    await fund(api, t["tenant_id"], "player@example.com", "10")
    payload = {k: v for k, v in {**body("bad-input"), **change}.items() if v is not None}
    resp = await api.post(PURCHASE, key=t["sdk_key"], json=payload)
    if code is None:
        assert resp.status == 200, resp
        return
    assert_envelope(resp, 400, code)
    assert await balance(api, t["sdk_key"]) == "10"


async def test_100_concurrent_purchases_on_a_20_unit_wallet(api: Api) -> None:
    t = await api.create_tenant(rate_limit_per_second=1000)
    await fund(api, t["tenant_id"], "player@example.com", "20")
    results = await asyncio.gather(
        *(api.post(PURCHASE, key=t["sdk_key"], json=body(f"race-{i}", price="1")) for i in range(100))
    )
    statuses = sorted(r.status for r in results)
    assert statuses.count(200) == 20 and statuses.count(402) == 80, statuses
    assert await balance(api, t["sdk_key"]) == "0"
    # Never negative on the way: every balance the player's wallet passed through is >= 0.
    entries = (await api.get("/api/ledger/entries?limit=1000", key=t["sdk_key"])).body["data"]
    player_balances = [e["balance_after"] for e in entries if e["account"] == "player"]
    assert len(player_balances) == 21  # the credit and 20 purchases
    assert all(not b.startswith("-") for b in player_balances)
    await check_ledger(api)


async def test_same_key_50_times_at_once_is_one_transaction(api: Api) -> None:
    t = await api.create_tenant(rate_limit_per_second=1000)
    await fund(api, t["tenant_id"], "player@example.com", "100")
    results = await asyncio.gather(*(api.post(PURCHASE, key=t["sdk_key"], json=body("once")) for _ in range(50)))
    assert {r.status for r in results} == {200}
    assert len({r.body["transaction_id"] for r in results}) == 1
    assert sum(1 for r in results if r.body["duplicate"] is False) == 1
    assert await balance(api, t["sdk_key"]) == "90"


FEE_SETTINGS_BPS = [0, 1, 250, 333, 999, 1000, 1250, 3333, 5000, 9999, 10000]


def test_fee_arithmetic_for_every_price_up_to_1000_units() -> None:
    """partner + network == price exactly, for every price 0.01 .. 1,000.00 and every fee tested;
    the network's fee is the one rounded down (a fee never exceeds its rate)."""
    for bps in FEE_SETTINGS_BPS:
        for price in range(1, 100_001):
            partner, fee = money.split_item_purchase(price, network_fee_bps=bps)
            assert partner + fee == price
            assert 0 <= fee <= price
            assert fee == price * bps // 10_000


async def test_split_through_the_api_with_a_negotiated_fee(api: Api) -> None:
    t = await api.create_tenant(network_fee_percentage="12.5", rate_limit_per_second=1000)
    await fund(api, t["tenant_id"], "player@example.com", "1000")
    prices = ["0.01", "0.07", "0.08", "1", "3.33", "99.99"]
    results = await asyncio.gather(
        *(api.post(PURCHASE, key=t["sdk_key"], json=body(f"p{i}", price=p)) for i, p in enumerate(prices))
    )
    for price, resp in zip(prices, results, strict=True):
        minor = money.parse_scaled(price, places=2, field="price")
        partner, fee = money.split_item_purchase(minor, network_fee_bps=1250)
        assert resp.body["partner_amount"] == money.format_units(partner)
        assert resp.body["network_fee"] == money.format_units(fee)
    await check_ledger(api)


async def test_item_purchased_event_reaches_jetstream(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(currency_name="Stars")
    await fund(api, t["tenant_id"], "fan@example.com", "10")
    resp = await api.post(PURCHASE, key=t["sdk_key"], json=body("evt", player_email="Fan@Example.com", price="2.5"))
    assert resp.status == 200
    prefix = stack.env.get("INVO_NATS_SUBJECT_PREFIX", "invo.events")
    stream = stack.env.get("INVO_NATS_STREAM", "INVO_EVENTS")
    nc = await nats.connect(stack.env["INVO_NATS_URL"])
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{prefix}.{t['tenant_id']}.item.purchased", stream=stream)

        async def fetched() -> list[Any]:
            try:
                return list(await sub.fetch(10, timeout=1))
            except nats.errors.TimeoutError:
                return []

        msgs = await eventually(fetched, timeout_s=15)
        assert len(msgs) == 1
        event = json.loads(msgs[0].data)
        assert msgs[0].headers["Nats-Msg-Id"] == event["event_id"]
        assert event["event_type"] == "item.purchased" and event["tenant_id"] == t["tenant_id"]
        data = event["data"]
        assert data["transaction_id"] == resp.body["transaction_id"]
        assert (data["player_email"], data["price"], data["total"]) == ("fan@example.com", "2.50", "2.50")
        assert (data["partner_amount"], data["network_fee"], data["new_balance"]) == ("2.25", "0.25", "7.50")
        assert data["currency_name"] == "Stars"
        await sub.unsubscribe()
    finally:
        await nc.close()
