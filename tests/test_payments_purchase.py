"""Currency purchases through the public gateway (the seed's "Direct API"), the answers: every
documented response of a purchase, identity_id, and metadata passed through.
The card processor is the Stripe simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from devstack.stack import Stack
from tests.helpers import Api, assert_envelope, eventually
from tests.payments_support import (
    DECLINED,
    INSUFFICIENT,
    PURCHASE,
    THREE_DS,
    balance,
    buy,
    check_ledger,
    email,
    order,
    purchase_body,
    ref,
    sim,
    sim_faults,
    transitions,
)

# -- 1. the documented responses ------------------------------------------------------------------


async def test_success_credits_usd_times_ten(api: Api) -> None:
    t = await api.create_tenant(currency_name="Gold Coins")
    player = email()
    resp = await buy(api, t, player, metadata={"your_user_id": "u_42"})
    assert resp.status == 200, resp
    b = resp.body
    assert b["status"] == "success" and b["duplicate"] is False
    assert b["transaction_id"].startswith("txn_")
    assert b["order_id"].startswith("ord_")
    assert b["new_balance"] == "100"
    assert (b["usd_amount"], b["currency_amount"], b["currency_name"]) == ("10.00", "100", "Gold Coins")
    assert await balance(api, t, player) == "100"
    # USD x 10 for an amount that is not round: 12.34 USD is 123.4 units.
    more = await buy(api, t, player, usd_amount="12.34")
    assert more.status == 200, more
    assert (more.body["currency_amount"], more.body["new_balance"]) == ("123.40", "223.40")
    # The smallest purchase allowed.
    least = await buy(api, t, player, usd_amount="0.50")
    assert least.status == 200 and least.body["currency_amount"] == "5", least
    assert await balance(api, t, player) == "228.40"
    await check_ledger(api)


async def test_requires_action_charges_nothing(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    resp = await buy(api, t, player, payment_method_id=THREE_DS)
    assert resp.status == 200, resp
    b = resp.body
    # The seed's answer, exactly: no transaction_id (nothing was credited), no balance yet.
    assert set(b) == {"status", "client_secret", "payment_intent_id", "order_id", "new_balance", "duplicate"}, b
    assert b["status"] == "requires_action" and b["duplicate"] is False
    assert b["new_balance"] is None
    assert b["payment_intent_id"].startswith("pi_")
    assert b["client_secret"].startswith(b["payment_intent_id"] + "_secret_")
    assert b["order_id"].startswith("ord_")
    assert await balance(api, t, player) == "0"
    assert (await order(api, t, b["order_id"]))["status"] == "requires_action"


async def test_replay_of_a_completed_purchase_is_a_duplicate_credited_once(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    first = await buy(api, t, player, reference)
    assert first.status == 200 and first.body["duplicate"] is False, first
    for _ in range(2):
        again = await buy(api, t, player, reference)
        assert again.status == 200, again
        assert again.body["status"] == "success" and again.body["duplicate"] is True
        assert again.body["transaction_id"] == first.body["transaction_id"]
        assert again.body["order_id"] == first.body["order_id"]
        assert again.body["new_balance"] == "100"
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_purchase_in_flight_is_409_pending_then_a_duplicate(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    # The processor answers late; its webhook is held so only the API response can settle the order.
    async with sim_faults(api, stack, slow_next=1, slow_s=2, webhook_hold=True, match="/confirm"):
        first_task = asyncio.ensure_future(buy(api, t, player, reference))
        try:

            async def at_processor() -> bool:
                state = await sim(api, stack, "state")
                return any(pi["metadata"].get("purchase_reference") == reference for pi in state["intents"])

            await eventually(at_processor, timeout_s=5)
            pending = await buy(api, t, player, reference)
        finally:
            first = await first_task
        assert pending.status == 409, pending
        assert pending.body["status"] == "pending" and pending.body["duplicate"] is True
        assert first.status == 200, first
        assert first.body["status"] == "success" and first.body["duplicate"] is False
        assert pending.body["order_id"] == first.body["order_id"]
        # The held payment_intent.succeeded arrives after the API settled the order: no second credit.
        released = await sim(api, stack, "release_webhooks")
        assert released["released"] >= 1
    later = await buy(api, t, player, reference)
    assert later.status == 200, later
    assert later.body["duplicate"] is True
    assert later.body["transaction_id"] == first.body["transaction_id"]
    assert await balance(api, t, player) == "100"
    assert transitions(await order(api, t, first.body["order_id"])) == [
        (None, "pending_payment"),
        ("pending_payment", "completed"),
    ]
    await check_ledger(api)


@pytest.mark.parametrize("missing", [None, ""], ids=["omitted", "empty"])
async def test_missing_purchase_reference(api: Api, missing: str | None) -> None:
    t = await api.create_tenant()
    player = email()
    body = purchase_body(player, missing)
    resp = await api.post(PURCHASE, key=t["sdk_key"], json=body)
    assert_envelope(resp, 400, "MISSING_PURCHASE_REFERENCE")
    assert await balance(api, t, player) == "0"


async def test_purchase_reference_length(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    too_long = await buy(api, t, player, "r" * 256)
    assert_envelope(too_long, 400, "INVALID_PURCHASE_REFERENCE")
    not_text = await api.post(PURCHASE, key=t["sdk_key"], json={**purchase_body(player, None), "purchase_reference": 7})
    assert_envelope(not_text, 400, "INVALID_PURCHASE_REFERENCE")
    assert await balance(api, t, player) == "0"
    longest = await buy(api, t, player, "r" * 255)
    assert longest.status == 200, longest
    assert longest.body["status"] == "success" and longest.body["new_balance"] == "100"
    assert (await order(api, t, longest.body["order_id"]))["purchase_reference"] == "r" * 255
    await check_ledger(api)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"usd_amount": "10.001"}, "INVALID_AMOUNT"),
        ({"usd_amount": "-1"}, "INVALID_AMOUNT"),
        ({"usd_amount": "0"}, "INVALID_AMOUNT"),
        ({"usd_amount": "abc"}, "INVALID_AMOUNT"),
        ({"usd_amount": None}, "MISSING_PARAMETER"),
        ({"usd_amount": "0.49"}, "INVALID_AMOUNT"),
        ({"surprise": 1}, "UNKNOWN_FIELD"),
    ],
    ids=["three_decimals", "negative", "zero", "not_a_number", "missing", "below_minimum", "unknown_field"],
)
async def test_bad_input_is_400_and_reserves_nothing(api: Api, change: dict[str, Any], code: str) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    body = {k: v for k, v in {**purchase_body(player, reference), **change}.items() if v is not None}
    resp = await api.post(PURCHASE, key=t["sdk_key"], json=body)
    assert_envelope(resp, 400, code)
    assert await balance(api, t, player) == "0"
    # The refused request recorded nothing under its reference: a valid one goes through as new.
    ok = await buy(api, t, player, reference)
    assert ok.status == 200 and ok.body["duplicate"] is False, ok
    await check_ledger(api)


@pytest.mark.parametrize(
    ("card", "decline_code"),
    [(DECLINED, "generic_decline"), (INSUFFICIENT, "insufficient_funds")],
)
async def test_card_decline_is_402_with_decline_code(api: Api, card: str, decline_code: str) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    resp = await buy(api, t, player, reference, payment_method_id=card)
    assert_envelope(resp, 402, "CARD_DECLINED")
    assert resp.body["decline_code"] == decline_code
    assert resp.body["error"] == "card_declined"
    assert await balance(api, t, player) == "0"
    # A replay of the declined reference is the same decline, still not a 5xx.
    again = await buy(api, t, player, reference, payment_method_id=card)
    assert_envelope(again, 402, "CARD_DECLINED")
    assert again.body["decline_code"] == decline_code
    assert await balance(api, t, player) == "0"


# -- 7. identity_id -----------------------------------------------------------------------------------


async def test_identity_id_is_per_person_across_tenants_and_never_the_email(api: Api) -> None:
    a = await api.create_tenant()
    b = await api.create_tenant()
    player, someone_else = email(), email()
    ra = await buy(api, a, player)
    rb = await buy(api, b, player)
    rc = await buy(api, a, someone_else)
    assert ra.status == rb.status == rc.status == 200, (ra, rb, rc)
    ida, idb, idc = ra.body["identity_id"], rb.body["identity_id"], rc.body["identity_id"]
    assert ida and ida == idb
    assert idc and idc != ida
    assert (await order(api, b, rb.body["order_id"]))["identity_id"] == idb
    for identity, mail in ((ida, player), (idc, someone_else)):
        local = mail.split("@")[0]
        assert mail.lower() not in identity.lower()
        assert local.lower() not in identity.lower()
        assert "@" not in identity
    await check_ledger(api)


# -- metadata -------------------------------------------------------------------------------------------


async def test_metadata_numbers_pass_through_unchanged(api: Api) -> None:
    t = await api.create_tenant()
    metadata = {"score": 1.5, "level": 2, "vip": True, "note": None, "tags": ["a"], "nested": {"x": "y"}}
    resp = await buy(api, t, email(), metadata=metadata)
    assert resp.status == 200, resp
    assert (await order(api, t, resp.body["order_id"]))["metadata"] == metadata
