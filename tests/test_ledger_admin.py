"""Ledger through the public gateway, the operator's side: admin credits and debits, a retry
with the same idempotency key, refused bad requests, and the ledger check.

Every test makes its own tenants; players are funded with admin credits.
"""

from __future__ import annotations

from typing import Any

from tests.helpers import Api, assert_envelope
from tests.ledger_reads_support import all_entries, balance_of, credit, funded, purchase, with_key

# -- 8. admin adjustments and the ledger check ------------------------------------------------


async def test_admin_credit_and_debit(api: Api) -> None:
    t = await api.create_tenant()
    tid, key = t["tenant_id"], t["sdk_key"]
    resp = await credit(api, tid, "Admin@X.com", "50")
    assert resp.status == 200, resp
    assert resp.body["status"] == "success"
    assert resp.body["transaction_id"].startswith("txn_")
    assert (resp.body["tenant_id"], resp.body["player_email"]) == (tid, "admin@x.com")
    assert (resp.body["amount"], resp.body["new_balance"], resp.body["duplicate"]) == ("50", "50", False)
    assert (resp.body["currency_name"], resp.body["reason"]) == ("Gold Coins", "test funding")

    debit = {"tenant_id": tid, "player_email": "admin@x.com", "amount": "20.5", "reason": "chargeback"}
    resp = await api.post("/admin/players/debit", admin=True, json=with_key(debit))
    assert resp.status == 200, resp
    assert (resp.body["amount"], resp.body["new_balance"]) == ("20.50", "29.50")
    assert await balance_of(api, key, "admin@x.com") == "29.50"

    # More than the balance: refused, nothing moves.
    entries_before = await all_entries(api, key)
    resp = await api.post("/admin/players/debit", admin=True, json=with_key(debit, amount="29.51"))
    assert_envelope(resp, 402, "INSUFFICIENT_BALANCE")
    assert await balance_of(api, key, "admin@x.com") == "29.50"
    assert await all_entries(api, key) == entries_before
    resp = await api.post("/admin/players/debit", admin=True, json=with_key(debit, amount="29.50"))
    assert resp.body["new_balance"] == "0"
    assert_envelope(
        await api.post("/admin/players/debit", admin=True, json=with_key(debit, amount="0.01")),
        402,
        "INSUFFICIENT_BALANCE",
    )
    # An unknown player has nothing to debit.
    assert_envelope(
        await api.post("/admin/players/debit", admin=True, json=with_key(debit, player_email="ghost@x.com")),
        402,
        "INSUFFICIENT_BALANCE",
    )

    # One idempotency key, one movement; another body with it is refused.
    assert (await credit(api, tid, "admin@x.com", "5", idempotency_key="k-1")).body["new_balance"] == "5"
    assert_envelope(await credit(api, tid, "admin@x.com", "6", idempotency_key="k-1"), 400, "IDEMPOTENCY_KEY_REUSED")
    assert_envelope(
        await api.post(
            "/admin/players/debit",
            admin=True,
            json={**debit, "amount": "5", "idempotency_key": "k-1"},
        ),
        400,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert await balance_of(api, key, "admin@x.com") == "5"


async def test_admin_credit_retry_with_the_same_idempotency_key_replays(api: Api) -> None:
    t = await api.create_tenant()
    first = await credit(api, t["tenant_id"], "retry@x.com", "7", idempotency_key="retry-1")
    assert first.status == 200, first
    again = await credit(api, t["tenant_id"], "retry@x.com", "7", idempotency_key="retry-1")
    assert again.status == 200, again
    assert again.body["duplicate"] is True
    assert again.body["transaction_id"] == first.body["transaction_id"]
    assert again.body["new_balance"] == "7"
    assert await balance_of(api, t["sdk_key"], "retry@x.com") == "7"


async def test_admin_adjustments_refuse_bad_requests(api: Api) -> None:
    t = await api.create_tenant()
    tid = t["tenant_id"]
    good = {"tenant_id": tid, "player_email": "p@x.com", "amount": "1", "reason": "why", "idempotency_key": "adj-1"}
    for path in ("/admin/players/credit", "/admin/players/debit"):
        cases: list[tuple[dict[str, Any], int, str]] = [
            # Required: a key invented by the server would make a retried request move money twice.
            ({k: v for k, v in good.items() if k != "idempotency_key"}, 400, "MISSING_IDEMPOTENCY_KEY"),
            ({**good, "idempotency_key": ""}, 400, "INVALID_IDEMPOTENCY_KEY"),
            ({k: v for k, v in good.items() if k != "reason"}, 400, "MISSING_PARAMETER"),
            ({**good, "reason": "   "}, 400, "INVALID_PARAMETER"),
            ({k: v for k, v in good.items() if k != "amount"}, 400, "MISSING_PARAMETER"),
            ({**good, "amount": "0"}, 400, "INVALID_PARAMETER"),
            ({**good, "amount": "-1"}, 400, "INVALID_PARAMETER"),
            ({**good, "amount": "1.001"}, 400, "INVALID_PARAMETER"),
            ({**good, "amount": True}, 400, "INVALID_PARAMETER"),
            ({**good, "amount": "1e3"}, 400, "INVALID_PARAMETER"),
            ({**good, "player_email": "nope"}, 400, "INVALID_PLAYER_EMAIL"),
            ({k: v for k, v in good.items() if k != "tenant_id"}, 400, "MISSING_PARAMETER"),
            ({**good, "tenant_id": "tn_" + "0" * 26}, 404, "TENANT_NOT_FOUND"),
            ({**good, "bogus": 1}, 400, "UNKNOWN_FIELD"),
        ]
        for body, status, code in cases:
            assert_envelope(await api.post(path, admin=True, json=body), status, code)
        # An SDK key is no admin credential, in either header.
        assert_envelope(await api.post(path, key=t["sdk_key"], json=good), 401, "MISSING_ADMIN_TOKEN")
        resp = await api.post(path, json=good, headers={"Authorization": f"Bearer {t['sdk_key']}"})
        assert_envelope(resp, 401, "INVALID_ADMIN_TOKEN")
    assert await balance_of(api, t["sdk_key"], "p@x.com") == "0"
    assert await all_entries(api, t["sdk_key"]) == []
    assert_envelope(await api.get("/admin/ledger/check", key=t["sdk_key"]), 401, "MISSING_ADMIN_TOKEN")


async def test_ledger_check_is_ok(api: Api) -> None:
    t = await api.create_tenant()
    await funded(api, t["tenant_id"], "c@x.com", "3")
    await purchase(api, t["sdk_key"], "c@x.com", "1")
    resp = await api.get("/admin/ledger/check", admin=True)
    assert resp.status == 200, resp
    assert resp.body["ok"] is True, resp.body
    assert resp.body["total_balance"] == "0"
    assert resp.body["negative_accounts"] == []
    assert resp.body["unbalanced_transactions"] == []
    assert resp.body["drifted_accounts"] == []
    assert resp.body["accounts"] >= 4  # the player, the revenue, the network's fees, world:adjustments
    assert resp.body["transactions"] >= 2
