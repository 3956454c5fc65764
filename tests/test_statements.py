"""Daily statements (issue 17, item 4): a tenant's day equals the sum of that day's
`GET /api/ledger/entries`, balances close as they open plus the day, the partner's copy is signed
like a webhook, CSV says the same, another tenant's activity never shows, and a day not yet over
says so."""

from __future__ import annotations

import csv
import datetime
import io
import json
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

from services.common import signing
from tests import payouts_support as ps
from tests.after_sale_support import paid, refund
from tests.helpers import Api, assert_envelope

PURCHASE = "/api/item-purchases/purchase-item"


def today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


async def all_entries(api: Api, key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await api.get(f"/api/ledger/entries?limit=500{'&cursor=' + cursor if cursor else ''}", key=key)
        assert page.status == 200, page
        out += page.body["data"]
        if not page.body["has_more"]:
            return out
        cursor = page.body["next_cursor"]


async def busy_tenant(api: Api) -> dict[str, Any]:
    """A tenant with a bit of everything today: credits, purchases, a card purchase and its refund, a payout."""
    t = await ps.earning_tenant(api, "500")
    p1, p2 = (f"st-{uuid.uuid4().hex[:6]}@example.com" for _ in range(2))
    for p in (p1, p2):
        assert (await api.credit(t["tenant_id"], p, "30")).status == 200
    for p, price in ((p1, "7.5"), (p2, "12"), (p1, "3")):
        body = {
            "player_email": p,
            "item_id": "gem",
            "item_name": "Gem",
            "price": price,
            "idempotency_key": uuid.uuid4().hex,
        }
        assert (await api.post(PURCHASE, key=t["sdk_key"], json=body)).status == 200
    _, bought = await paid(api, t)
    assert (await refund(api, bought["order_id"], "2.50")).status == 201
    assert (await ps.request(api, t, "5.00")).status == 201
    return t


async def test_a_day_is_the_sum_of_its_entries_and_closes_as_it_opens_plus_the_day(api: Api) -> None:
    t = await busy_tenant(api)
    day = today().isoformat()
    resp = await api.get(f"/api/statements/{day}", key=t["sdk_key"])
    assert resp.status == 200, resp
    s = resp.body
    assert (s["tenant_id"], s["day"], s["complete"], s["currency_name"]) == (t["tenant_id"], day, False, "Stars")

    sums: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    entries = [e for e in await all_entries(api, t["sdk_key"]) if e["created_at"].startswith(day)]
    for e in entries:
        cell = sums[(e["account"], e["kind"])]
        cell[0] += 1
        cell[1] += Decimal(e["amount"])
    got = {(m["account"], m["kind"]): [Decimal(m["count"]), Decimal(m["amount"])] for m in s["movements"]}
    assert got == dict(sums) and s["entries"] == len(entries) > 10
    assert {"item_purchase", "currency_purchase", "adjustment_credit"} <= {k for _, k in got}
    # A new tenant: everything opened at zero today and closed at what its accounts hold now.
    for group, account in (("players", "player"), ("revenue", "revenue")):
        net = sum((v[1] for (a, _), v in sums.items() if a == account), Decimal(0))
        assert Decimal(s["balances"][group]["opening"]) == 0
        assert Decimal(s["balances"][group]["closing"]) == net
    revenue = await ps.revenue(api, t)
    assert Decimal(s["balances"]["revenue"]["closing"]) == Decimal(revenue["owed_units"])

    # Yesterday: complete, before any of it; tomorrow: not yet.
    yesterday = (today() - datetime.timedelta(days=1)).isoformat()
    before = (await api.get(f"/api/statements/{yesterday}", key=t["sdk_key"])).body
    assert before["complete"] is True and before["movements"] == [] and before["entries"] == 0
    assert before["balances"] == {
        "players": {"opening": "0", "closing": "0"},
        "revenue": {"opening": "0", "closing": "0"},
    }
    tomorrow = (today() + datetime.timedelta(days=1)).isoformat()
    assert_envelope(await api.get(f"/api/statements/{tomorrow}", key=t["sdk_key"]), 400, "DAY_IN_THE_FUTURE")
    for bad in ("2026-13-01", "20261201", "2026-1-1", "yesterday"):
        assert (await api.get(f"/api/statements/{bad}", key=t["sdk_key"])).status == 400, bad


async def test_the_partners_copy_is_signed_and_csv_says_the_same(api: Api) -> None:
    t = await busy_tenant(api)
    day = today().isoformat()
    resp = await api.get(f"/api/statements/{day}", key=t["sdk_key"])
    raw = json.dumps(resp.body, separators=(",", ":")).encode()
    header = resp.headers["X-Invo-Signature"]
    stamp = int(header.split(",")[0].removeprefix("t="))
    assert header == signing.signature_header(raw, [t["webhook_signing_secret"]], timestamp=stamp)
    as_csv = await api.get(f"/api/statements/{day}?format=csv", key=t["sdk_key"])
    assert as_csv.status == 200 and as_csv.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.body)))
    assert rows[0] == ["section", "account", "kind", "count", "amount"]
    moves = {(r[1], r[2]): (int(r[3]), r[4]) for r in rows if r[0] == "movement"}
    assert moves == {(m["account"], m["kind"]): (m["count"], m["amount"]) for m in resp.body["movements"]}
    assert ["balance", "revenue", "closing", "", resp.body["balances"]["revenue"]["closing"]] in rows
    signed = as_csv.headers["X-Invo-Signature"]
    assert signed == signing.signature_header(
        as_csv.body.encode(), [t["webhook_signing_secret"]], timestamp=int(signed.split(",")[0][2:])
    )


async def test_operators_read_any_tenants_statement_and_tenants_only_their_own(api: Api) -> None:
    a, b = await busy_tenant(api), await api.create_tenant()
    day = today().isoformat()
    mine = (await api.get(f"/api/statements/{day}", key=a["sdk_key"])).body
    theirs = (await api.get(f"/api/statements/{day}", key=b["sdk_key"])).body
    assert theirs["movements"] == [] and theirs["tenant_id"] == b["tenant_id"]
    as_operator = await api.get(f"/admin/tenants/{a['tenant_id']}/statements/{day}", admin=True)
    assert as_operator.status == 200
    assert {k: v for k, v in as_operator.body.items() if k != "generated_at"} == {
        k: v for k, v in mine.items() if k != "generated_at"
    }
    missing = await api.get(f"/admin/tenants/tn_{'0' * 26}/statements/{day}", admin=True)
    assert missing.status == 404


async def test_volumes_count_every_transaction_per_hour_and_kind(api: Api) -> None:
    async def totals() -> dict[str, int]:
        resp = await api.get("/admin/volumes?hours=48", admin=True)
        assert resp.status == 200, resp
        assert len(resp.body["hours"]) == 48 and resp.body["hours"][0]["hour"] == resp.body["since"]
        out: dict[str, int] = defaultdict(int)
        for h in resp.body["hours"]:
            for kind, n in h["counts"].items():
                out[kind] += n
        return out

    before = await totals()
    t = await api.create_tenant()
    player = f"vol-{uuid.uuid4().hex[:6]}@example.com"
    assert (await api.credit(t["tenant_id"], player, "10")).status == 200
    for _ in range(3):
        body = {
            "player_email": player,
            "item_id": "x",
            "item_name": "X",
            "price": "1",
            "idempotency_key": uuid.uuid4().hex,
        }
        assert (await api.post(PURCHASE, key=t["sdk_key"], json=body)).status == 200
    after = await totals()
    assert after["item_purchase"] - before.get("item_purchase", 0) == 3
    assert after["adjustment_credit"] - before.get("adjustment_credit", 0) == 1
    for bad in ("0", "169", "x"):
        assert_envelope(await api.get(f"/admin/volumes?hours={bad}", admin=True), 400, "INVALID_PARAMETER")
