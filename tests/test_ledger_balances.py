"""Ledger reads through the public gateway, balances: one player's balance, up to 1000 at once
in request order, and tenants that never see each other's balances, entries, export or revenue.

Every test makes its own tenants; players are funded with admin credits.
"""

from __future__ import annotations

import random

from tests.helpers import Api, assert_envelope
from tests.ledger_reads_support import (
    BALANCE_KEYS,
    all_entries,
    assert_summary,
    balance,
    balance_of,
    entries_page,
    export,
    funded,
    purchase,
)

# -- 1. one player's balance ------------------------------------------------------------------


async def test_single_balance_reads_zero_then_credits_minus_purchases_and_ignores_case(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    resp = await balance(api, key, "nobody@x.com")
    assert resp.status == 200, resp
    assert resp.body == {
        "player_email": "nobody@x.com",
        "balance": "0",
        "available_balance": "0",
        "pending": "0",
        "debt": "0",
        "currency_name": "Gold Coins",
    }

    assert (await funded(api, t["tenant_id"], "Player@X.com", "12.34"))["new_balance"] == "12.34"
    bought = await purchase(api, key, "player@x.com", "1.05", quantity=2)
    assert bought["total"] == "2.10"
    assert bought["new_balance"] == "10.24"
    for spelling in ("player@x.com", "Player@X.com", "PLAYER@X.COM", "  player@x.com "):
        resp = await balance(api, key, spelling)
        assert resp.status == 200, resp
        assert resp.body == {
            "player_email": "player@x.com",
            "balance": "10.24",
            "available_balance": "10.24",
            "pending": "0",
            "debt": "0",
            "currency_name": "Gold Coins",
        }

    for bad in ("not-an-email", "a@b", "two@@x.com", "sp ace@x.com", "x" * 65 + "@x.com"):
        assert_envelope(await balance(api, key, bad), 400, "INVALID_PLAYER_EMAIL")
    assert_envelope(await api.get("/api/players/balance", key=key), 400, "MISSING_PARAMETER")
    assert_envelope(await api.get("/api/players/balance?player_email=", key=key), 400, "MISSING_PARAMETER")
    assert_envelope(await api.get("/api/players/balance?player_email=p%40x.com"), 401, "MISSING_API_KEY")


# -- 2. many balances at once -----------------------------------------------------------------


async def test_batch_balances_up_to_1000_in_request_order(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    emails = [f"p{i:04d}@batch.test" for i in range(1000)]
    random.Random(7).shuffle(emails)  # not sorted: the answer must follow the request
    rich = {emails[0]: "1", emails[500]: "2.50", emails[999]: "0.07"}
    for email, amount in rich.items():
        await funded(api, t["tenant_id"], email, amount)

    resp = await api.post("/api/players/balances", key=key, json={"player_emails": emails})
    assert resp.status == 200, resp
    assert resp.body["currency_name"] == "Gold Coins"
    got = resp.body["balances"]
    assert [b["player_email"] for b in got] == emails
    for b in got:
        assert set(b) == BALANCE_KEYS
        want = rich.get(b["player_email"], "0")
        assert (b["balance"], b["available_balance"], b["pending"]) == (want, want, "0")

    # Mixed case reads the same wallet, normalised.
    resp = await api.post("/api/players/balances", key=key, json={"player_emails": [emails[500].upper(), "new@x.com"]})
    assert resp.status == 200, resp
    assert [(b["player_email"], b["balance"]) for b in resp.body["balances"]] == [
        (emails[500], "2.50"),
        ("new@x.com", "0"),
    ]

    too_many = [f"q{i}@x.com" for i in range(1001)]
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": too_many}), 400, "INVALID_PARAMETER"
    )
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": []}), 400, "INVALID_PARAMETER"
    )
    missing = await api.post("/api/players/balances", key=key, json={})
    assert_envelope(missing, 400, "MISSING_PARAMETER")
    assert missing.body["param"] == "player_emails"
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": "a@x.com"}), 400, "INVALID_PARAMETER"
    )
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": ["a@x.com", "broken", "b@x.com"]}),
        400,
        "INVALID_PLAYER_EMAIL",
    )
    assert_envelope(
        await api.post("/api/players/balances", key=key, json={"player_emails": ["a@x.com"], "extra": 1}),
        400,
        "UNKNOWN_FIELD",
    )


# -- 3. tenants never see each other ----------------------------------------------------------


async def test_tenant_isolation_of_balances_entries_export_and_revenue(api: Api) -> None:
    a = await api.create_tenant()
    b = await api.create_tenant()
    await funded(api, a["tenant_id"], "shared@x.com", "50")
    await funded(api, a["tenant_id"], "only-a@x.com", "5")
    a_bought = [await purchase(api, a["sdk_key"], "shared@x.com", "10") for _ in range(2)]
    await funded(api, b["tenant_id"], "only-b@x.com", "3")
    b_bought = await purchase(api, b["sdk_key"], "only-b@x.com", "1")

    # The same email is another wallet in B.
    assert await balance_of(api, a["sdk_key"], "shared@x.com") == "30"
    assert await balance_of(api, b["sdk_key"], "shared@x.com") == "0"
    resp = await api.post("/api/players/balances", key=b["sdk_key"], json={"player_emails": ["shared@x.com"]})
    assert resp.body["balances"][0]["balance"] == "0"

    a_entries = await all_entries(api, a["sdk_key"])
    b_entries = await all_entries(api, b["sdk_key"])
    a_txns = {e["transaction_id"] for e in a_entries}
    b_txns = {e["transaction_id"] for e in b_entries}
    assert {p["transaction_id"] for p in a_bought} <= a_txns
    assert b_bought["transaction_id"] in b_txns
    assert not a_txns & b_txns
    assert len(b_entries) == 2 + 3  # B's credit and B's purchase, nothing of A's
    assert all(e["account"] != "player_other_tenant" for e in a_entries + b_entries)
    assert {e.get("player_email") for e in b_entries} == {"only-b@x.com", None}
    # A's entry ids are no key into B's feed: B starting after A's first entry still sees only B's.
    resp = await entries_page(api, b["sdk_key"], cursor=a_entries[0]["entry_id"])
    assert resp.status == 200, resp
    assert {e["transaction_id"] for e in resp.body["data"]} <= b_txns

    _, b_lines = await export(api, b["sdk_key"])
    assert [line["player_email"] for line in b_lines[:-1]] == ["only-b@x.com"]
    assert_summary(b_lines[-1], 1)
    _, a_lines = await export(api, a["sdk_key"])
    assert sorted(line["player_email"] for line in a_lines[:-1]) == ["only-a@x.com", "shared@x.com"]

    a_rev = (await api.get("/api/revenue", key=a["sdk_key"])).body
    b_rev = (await api.get("/api/revenue", key=b["sdk_key"])).body
    assert a_rev["lifetime_units"] == "18"
    assert b_rev["lifetime_units"] == "0.90"
    assert b_rev["owed_units"] == "0.90"
