"""Operators' view of one player in a tenant: the wallet with holds and debt, the latest entries
newest first, the latest orders; the same wallet the tenant's own API reads."""

from __future__ import annotations

import urllib.parse
from typing import Any

from devstack.stack import Stack
from tests import transfers_support as ts
from tests.after_sale_support import paid, refund
from tests.helpers import Api, assert_envelope, eventually
from tests.payments_support import order, sim
from tests.test_operators import as_op, new_operator


def path(tenant_id: str, email: str) -> str:
    return f"/admin/tenants/{tenant_id}/player?{urllib.parse.urlencode({'player_email': email})}"


async def test_an_operator_reads_a_players_wallet_entries_and_orders(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, bought = await paid(api, src)  # 100 bought for $10.00
    await ts.initiate_transfer(api, src, dst, player, "10", ts.phone())  # 11 held by the transfer
    viewer = await new_operator(api, "viewer")
    got = await as_op(api, viewer, "GET", path(src["tenant_id"], player.upper()))  # emails are case-insensitive
    assert got.status == 200, got
    p = got.body
    assert (p["player_email"], p["balance"], p["held"], p["available"], p["in_debt"]) == (
        player,
        "89",
        "0",
        "89",
        False,
    )
    assert [e["kind"] for e in p["entries"]] == ["transfer_hold", "currency_purchase"]  # newest first
    assert [e["balance_after"] for e in p["entries"]] == ["89", "100"]
    assert [(o["order_id"], o["usd_amount"], o["currency_amount"]) for o in p["orders"]] == [
        (bought["order_id"], "10.00", "100")
    ]
    # A refund of everything after spending leaves a debt.
    assert (await refund(api, bought["order_id"])).status == 201
    after = (await api.get(path(src["tenant_id"], player), admin=True)).body
    assert after["in_debt"] is True and after["balance"] == "-11" and after["entries"][0]["kind"] == "clawback_refund"
    own = await api.get(f"/api/players/balance?player_email={player}", key=src["sdk_key"])
    assert own.body["balance"] == after["balance"]
    nobody = (await api.get(path(dst["tenant_id"], "nobody@example.com"), admin=True)).body
    assert (nobody["balance"], nobody["entries"], nobody["orders"]) == ("0", [], [])
    bad = await api.get(path(src["tenant_id"], "not-an-email"), admin=True)
    assert bad.status == 400
    missing = await api.get(path(f"tn_{'0' * 26}", player), admin=True)
    assert_envelope(missing, 404, "TENANT_NOT_FOUND")


async def test_operators_list_open_disputes_and_recent_fraud_warnings(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    _, disputed = await paid(api, t)
    _, warned = await paid(api, t)
    pi = (await order(api, t, disputed["order_id"]))["payment_intent_id"]
    await sim(api, stack, "dispute", {"payment_intent": pi})
    await sim(api, stack, "efw", {"payment_intent": (await order(api, t, warned["order_id"]))["payment_intent_id"]})

    async def listed(open_only: str) -> list[dict[str, Any]] | None:
        resp = await api.get(f"/admin/disputes?tenant_id={t['tenant_id']}&open_only={open_only}", admin=True)
        assert resp.status == 200, resp
        return resp.body["data"] or None

    found = await eventually(lambda: _both(listed), timeout_s=20)
    assert found is not None
    everything: list[dict[str, Any]] = found
    assert [(i["kind"], i["order_id"]) for i in everything] == [
        ("fraud_warning", warned["order_id"]),
        ("dispute", disputed["order_id"]),
    ]
    dispute = everything[1]
    assert dispute["usd_amount"] == "10.00" and dispute["outcome"] is None
    open_now = await listed("true")
    assert open_now is not None and [i["id"] for i in open_now] == [dispute["id"]]
    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "won"})

    async def closed() -> bool:
        return await listed("true") is None

    await eventually(closed, timeout_s=20)
    assert_envelope(await api.get("/admin/disputes?open_only=maybe", admin=True), 400, "INVALID_PARAMETER")


async def _both(listed: Any) -> list[dict[str, Any]] | None:
    items = await listed("false")
    return items if items is not None and len(items) == 2 else None
