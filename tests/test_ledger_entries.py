"""Ledger reads through the public gateway, the entries feed: every entry once, in order,
across pages, and a bad limit is a 400.

Every test makes its own tenants; players are funded with admin credits.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections import defaultdict
from decimal import Decimal
from typing import Any

from tests.helpers import Api, assert_envelope
from tests.ledger_reads_support import ISO, all_entries, entries_page, entry_seq, funded, purchase

# -- 4. the entries feed ----------------------------------------------------------------------


async def test_entries_feed_pages_every_entry_once_in_order(api: Api) -> None:
    t = await api.create_tenant()
    key, tid = t["sdk_key"], t["tenant_id"]
    credits = [await funded(api, tid, "p1@x.com"), await funded(api, tid, "p2@x.com")]
    purchases = [
        await purchase(api, key, "p1@x.com", "10"),
        await purchase(api, key, "p2@x.com", "3.33", quantity=3),
        await purchase(api, key, "p1@x.com", "0.17"),  # 0.16 to the partner, 0.01 (0.017 down) to the network
    ]
    credits.append(await funded(api, tid, "p2@x.com", "1.50"))

    everything = await all_entries(api, key)
    assert len(everything) == 2 * len(credits) + 3 * len(purchases)
    seqs = [entry_seq(e["entry_id"]) for e in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # limit=2 pages through the same entries, each exactly once, then has_more is false.
    paged: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        resp = await entries_page(api, key, cursor=cursor, limit=2)
        assert resp.status == 200, resp
        pages += 1
        assert len(resp.body["data"]) <= 2
        paged += resp.body["data"]
        cursor = resp.body["next_cursor"]
        assert cursor == resp.body["data"][-1]["entry_id"]
        if not resp.body["has_more"]:
            break
        assert len(resp.body["data"]) == 2
        assert pages < 100
    assert paged == everything
    assert pages == (len(everything) + 1) // 2

    # The last cursor tails the feed: nothing now, then exactly what is new.
    resp = await entries_page(api, key, cursor=cursor, limit=2)
    assert resp.body == {"data": [], "has_more": False, "next_cursor": cursor}
    late = await purchase(api, key, "p2@x.com", "1")
    resp = await entries_page(api, key, cursor=cursor)
    assert {e["transaction_id"] for e in resp.body["data"]} == {late["transaction_id"]}
    assert len(resp.body["data"]) == 3

    by_txn: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in everything:
        assert set(e) >= {"entry_id", "transaction_id", "account", "amount", "balance_after", "kind", "created_at"}
        assert ISO.match(e["created_at"])
        by_txn[e["transaction_id"]].append(e)
    assert set(by_txn) == {c["transaction_id"] for c in credits} | {p["transaction_id"] for p in purchases}
    for txn_entries in by_txn.values():
        assert sum(Decimal(e["amount"]) for e in txn_entries) == 0
        for e in txn_entries:
            if e["account"] in ("player", "revenue"):
                assert e["balance_after"] is not None
            else:
                assert e["balance_after"] is None

    for p, (email, total, partner, fee, after, revenue_after) in zip(
        purchases,
        [
            ("p1@x.com", "-10", "9", "1", "40", "9"),
            ("p2@x.com", "-9.99", "9", "0.99", "40.01", "18"),  # the fee, 0.999, rounds down
            ("p1@x.com", "-0.17", "0.16", "0.01", "39.83", "18.16"),
        ],
        strict=True,
    ):
        rows = {e["account"]: e for e in by_txn[p["transaction_id"]]}
        assert set(rows) == {"player", "revenue", "network_fee"}
        assert all(e["kind"] == "item_purchase" for e in rows.values())
        assert rows["player"]["player_email"] == email
        assert (rows["player"]["amount"], rows["player"]["balance_after"]) == (total, after)
        assert (rows["revenue"]["amount"], rows["revenue"]["balance_after"]) == (partner, revenue_after)
        assert (rows["network_fee"]["amount"], rows["network_fee"]["balance_after"]) == (fee, None)
        assert (p["partner_amount"], p["network_fee"]) == (partner, fee)
    for c in credits:
        rows = {e["account"]: e for e in by_txn[c["transaction_id"]]}
        assert set(rows) == {"player", "world"}
        assert rows["player"]["amount"] == c["amount"]
        assert rows["player"]["balance_after"] == c["new_balance"]
        assert rows["world"]["balance_after"] is None
        assert all(e["kind"] == "adjustment_credit" for e in rows.values())

    for bad in ("garbage", "!!!", base64.urlsafe_b64encode(b"e:abc").decode(), base64.b64encode(b"x:1").decode()):
        assert_envelope(await entries_page(api, key, cursor=bad), 400, "INVALID_PARAMETER")
    for limit in ("0", "1001", "-1", "two", "1.5", ""):
        resp = await api.get("/api/ledger/entries?limit=" + limit, key=key)
        assert_envelope(resp, 400, "INVALID_PARAMETER")
    assert (await entries_page(api, key, limit=1000)).status == 200


async def test_entries_limit_with_a_unicode_digit_is_400_not_500(api: Api) -> None:
    t = await api.create_tenant()
    for limit in ("²", "①"):
        resp = await api.get("/api/ledger/entries?" + urllib.parse.urlencode({"limit": limit}), key=t["sdk_key"])
        assert_envelope(resp, 400, "INVALID_PARAMETER")
