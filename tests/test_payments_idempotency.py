"""Currency purchases through the public gateway, idempotency on purchase_reference: its alias,
a reference reused with another body, its scope (one tenant), and the same reference sent at once.
The card processor is the Stripe simulator."""

from __future__ import annotations

import asyncio

from devstack.stack import Stack
from tests.helpers import Api, assert_envelope
from tests.payments_support import PURCHASE, balance, buy, check_ledger, email, purchase_body, ref, sim

# -- 2, 3. idempotency --------------------------------------------------------------------------------


async def test_client_request_id_is_an_alias(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    body = {**purchase_body(player, None), "client_request_id": reference}
    first = await api.post(PURCHASE, key=t["sdk_key"], json=body)
    assert first.status == 200 and first.body["duplicate"] is False, first
    # The same key under either name, or both names agreeing, is a replay.
    for replay in (body, purchase_body(player, reference), {**body, "purchase_reference": reference}):
        again = await api.post(PURCHASE, key=t["sdk_key"], json=replay)
        assert again.status == 200 and again.body["duplicate"] is True, again
        assert again.body["transaction_id"] == first.body["transaction_id"]
    both = await api.post(PURCHASE, key=t["sdk_key"], json={**purchase_body(player, ref()), "client_request_id": ref()})
    assert_envelope(both, 400, "INVALID_PARAMETER")
    missing = await api.post(PURCHASE, key=t["sdk_key"], json={**purchase_body(player, None), "client_request_id": ""})
    assert_envelope(missing, 400, "MISSING_PURCHASE_REFERENCE")
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_reference_reused_with_another_body_is_refused(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    reference = ref()
    first = await buy(api, t, player, reference)
    assert first.status == 200, first
    for change in (
        {"usd_amount": "20.00"},
        {"player_email": email()},
        {"payment_method_id": "pm_card_mastercard"},
        {"metadata": {"coin_pack": "other"}},
    ):
        resp = await api.post(PURCHASE, key=t["sdk_key"], json={**purchase_body(player, reference), **change})
        assert_envelope(resp, 400, "IDEMPOTENCY_KEY_REUSED")
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_purchase_reference_is_unique_per_tenant(api: Api) -> None:
    a = await api.create_tenant()
    b = await api.create_tenant()
    player = email()
    reference = ref()
    ra = await buy(api, a, player, reference)
    rb = await buy(api, b, player, reference, usd_amount="5.00")
    assert ra.status == rb.status == 200, (ra, rb)
    assert ra.body["duplicate"] is rb.body["duplicate"] is False
    assert ra.body["order_id"] != rb.body["order_id"]
    assert ra.body["transaction_id"] != rb.body["transaction_id"]
    assert (await balance(api, a, player), await balance(api, b, player)) == ("100", "50")
    await check_ledger(api)


async def test_same_reference_sent_at_once_is_one_charge(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(rate_limit_per_second=1000)
    player = email()
    reference = ref()
    results = await asyncio.gather(*(buy(api, t, player, reference) for _ in range(10)))
    assert {r.status for r in results} <= {200, 409}, results
    firsts = [r for r in results if r.status == 200 and r.body["duplicate"] is False]
    assert len(firsts) == 1, results
    for r in results:
        if r.status == 409:
            assert (r.body["status"], r.body["duplicate"]) == ("pending", True)
        else:
            assert r.body["transaction_id"] == firsts[0].body["transaction_id"]
        assert r.body["order_id"] == firsts[0].body["order_id"]
    state = await sim(api, stack, "state")
    intents = [pi for pi in state["intents"] if pi["metadata"].get("purchase_reference") == reference]
    assert len(intents) == 1, intents
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_same_reference_for_two_players_at_once_is_never_a_5xx(api: Api) -> None:
    t = await api.create_tenant(rate_limit_per_second=1000)
    for _ in range(5):
        reference = ref()
        players = [email() for _ in range(8)]
        results = await asyncio.gather(*(buy(api, t, p, reference) for p in players))
        assert all(r.status < 500 for r in results), [(r.status, r.body.get("error_code")) for r in results]
        winners = [r for r in results if r.status == 200]
        assert len(winners) == 1, results
        for r in results:
            if r.status != 200:
                assert_envelope(r, 400, "IDEMPOTENCY_KEY_REUSED")
        credited = [await balance(api, t, p) for p in players]
        assert sorted(credited) == ["0"] * 7 + ["100"]
    await check_ledger(api)
