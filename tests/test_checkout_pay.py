"""Paying a hosted checkout session through the page API, with the session token, as the page's
script does (no browser): the processor simulator's test cards, a decline then another card,
3-D Secure, cancelling, single use under concurrency and against the caps, the webhook's metadata,
and saved cards. Each test reads back the balance, the order and the simulator's charges.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from devstack.stack import Stack
from tests.checkout_support import (
    CANCEL_URL,
    METADATA,
    PAID_KEYS,
    SUCCESS_URL,
    assert_no_store,
    assert_paid,
    cancel,
    charged,
    confirm,
    consumed_everywhere,
    intent_of,
    mint,
    mint_raw,
    new_card,
    pay,
    remove_card,
    saved_cards,
    session_intents,
    state,
    status_of,
    view,
)
from tests.helpers import Api, assert_envelope, eventually
from tests.payments_support import (
    DECLINED,
    THREE_DS,
    VISA,
    Events,
    balance,
    check_ledger,
    email,
    order,
    sim,
    sim_faults,
)

# -- one card, one charge -------------------------------------------------------------------------


async def test_pay_with_a_good_card_credits_once_and_consumes_the_session(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    seen = await view(api, m.token)
    assert seen.status == 200, seen
    assert_no_store(seen)
    assert seen.body == {
        "session_id": m.session_id,
        "status": "open",
        "usd_amount": "10.00",
        "currency_amount": "100",
        "currency_name": "Gold Coins",
        "expires_at": m.body["expires_at"],
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        "saved_cards": [],
        "order": None,
    }

    paid = await pay(api, m.token, VISA)
    assert_paid(paid, new_balance="100")
    assert_no_store(paid)
    o = await order(api, t, paid.body["order_id"])
    assert o["status"] == "completed" and o["transaction_id"] == paid.body["transaction_id"], o
    assert o["purchase_reference"] == f"checkout:{m.session_id}:1"
    assert (o["player_email"], o["usd_amount"], o["metadata"]) == (player, "10.00", METADATA)
    assert await balance(api, t, player) == "100"
    assert [pi["amount"] for pi in await charged(api, stack, m.session_id)] == [1000]

    await consumed_everywhere(api, m)
    read = await state(api, t, m.session_id)
    assert (read.body["status"], read.body["order_id"], read.body["transaction_id"]) == (
        "completed",
        paid.body["order_id"],
        paid.body["transaction_id"],
    )
    # The webhook path: purchase.completed, once, with the session's metadata.
    events = Events(stack, t["tenant_id"])
    await events.collect_until(paid.body["order_id"], "purchase.completed")
    completed = events.of(paid.body["order_id"], "purchase.completed")
    assert len(completed) == 1, completed
    assert completed[0]["data"] == {
        "transaction_id": paid.body["transaction_id"],
        "order_id": paid.body["order_id"],
        "player_email": player,
        "identity_id": o["identity_id"],
        "usd_amount": "10.00",
        "currency_amount": "100",
        "currency_name": "Gold Coins",
        "metadata": METADATA,
        "debt_repaid": "0",
        "currency_credited": "100",
    }
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_a_decline_then_another_card_on_the_same_session(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(spending_caps={"hourly_usd": "15.00"})
    player = email()
    m = await mint(api, t, player)
    declined = await pay(api, m.token, DECLINED)
    assert_envelope(declined, 402, "CARD_DECLINED")
    assert declined.body["decline_code"] == "generic_decline" and declined.body["duplicate"] is False
    first = declined.body["order_id"]
    seen = await view(api, m.token)
    assert seen.body["status"] == "open", seen
    assert seen.body["order"] == {"order_id": first, "status": "failed", "failure_message": "Your card was declined."}
    assert await status_of(api, t, m.session_id) == "open"
    assert await balance(api, t, player) == "0"

    paid = await pay(api, m.token, VISA)
    assert_paid(paid, new_balance="100")
    assert paid.body["order_id"] != first
    assert (await order(api, t, first))["status"] == "failed"
    second = await order(api, t, paid.body["order_id"])
    assert second["status"] == "completed" and second["purchase_reference"] == f"checkout:{m.session_id}:2"
    read = await state(api, t, m.session_id)
    assert (read.body["status"], read.body["order_id"]) == ("completed", paid.body["order_id"])
    intents = await session_intents(api, stack, m.session_id)
    assert sorted(pi["status"] for pi in intents) == ["requires_payment_method", "succeeded"], intents
    await consumed_everywhere(api, m)
    # The $15 cap was consumed once, by $10: another $10 is over it, $5 is not.
    over = await mint_raw(api, t, player)
    assert_envelope(over, 429, "SPENDING_LIMIT_EXCEEDED")
    assert (await mint_raw(api, t, player, usd_amount="5.00")).status == 201
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


# -- 3-D Secure -----------------------------------------------------------------------------------


async def test_three_d_secure_challenge_then_confirm(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    start = await pay(api, m.token, THREE_DS)
    assert start.status == 200, start
    assert set(start.body) == {"status", "order_id", "client_secret"}
    assert start.body["status"] == "requires_action"
    pi = intent_of(start.body["client_secret"])
    seen = await view(api, m.token)
    assert seen.body["status"] == "open"
    assert seen.body["order"] == {
        "order_id": start.body["order_id"],
        "status": "requires_action",
        "client_secret": start.body["client_secret"],
    }
    # A reload (or a second click) mid-challenge answers the same challenge and charges nothing else.
    again = await pay(api, m.token, VISA)
    assert again.status == 200 and again.body == start.body, again
    early = await confirm(api, m.token)
    assert_envelope(early, 409, "PAYMENT_REQUIRES_ACTION")
    assert await balance(api, t, player) == "0"

    await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
    done = await confirm(api, m.token)
    assert_paid(done, new_balance="100")
    assert done.body["order_id"] == start.body["order_id"]
    # Confirm again (the page resent it) is the same success; pay is refused as consumed.
    twice = await confirm(api, m.token)
    assert twice.status == 200 and twice.body == done.body, twice
    await consumed_everywhere(api, m)
    assert [p["id"] for p in await charged(api, stack, m.session_id)] == [pi]
    assert len(await session_intents(api, stack, m.session_id)) == 1
    assert await status_of(api, t, m.session_id) == "completed"
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_a_failed_challenge_then_another_card(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    start = await pay(api, m.token, THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    await sim(
        api, stack, "three_d_secure", {"payment_intent": intent_of(start.body["client_secret"]), "result": "fail"}
    )
    failed = await confirm(api, m.token)
    assert_envelope(failed, 402, "AUTHENTICATION_FAILED")
    assert failed.body["order_id"] == start.body["order_id"]
    assert (await order(api, t, start.body["order_id"]))["status"] == "failed"
    seen = await view(api, m.token)
    assert seen.body["status"] == "open" and seen.body["order"]["status"] == "failed", seen
    assert await balance(api, t, player) == "0"

    paid = await pay(api, m.token, VISA)
    assert_paid(paid, new_balance="100")
    assert paid.body["order_id"] != start.body["order_id"]
    assert len(await charged(api, stack, m.session_id)) == 1
    assert await status_of(api, t, m.session_id) == "completed"
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_cancel_during_the_challenge_cancels_the_intent_and_the_session(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    start = await pay(api, m.token, THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    done = await cancel(api, m.token)
    assert done.status == 200 and done.body == {"status": "cancelled", "cancel_url": CANCEL_URL}, done
    (pi,) = await session_intents(api, stack, m.session_id)
    assert (pi["id"], pi["status"]) == (intent_of(start.body["client_secret"]), "canceled")
    assert (await order(api, t, start.body["order_id"]))["status"] == "cancelled"
    assert await status_of(api, t, m.session_id) == "cancelled"
    assert_envelope(await pay(api, m.token, VISA), 409, "SESSION_CANCELLED")
    assert_envelope(await view(api, m.token), 409, "SESSION_CANCELLED")
    assert await charged(api, stack, m.session_id) == []
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_a_charge_in_flight_cannot_be_cancelled_and_a_second_pay_waits_for_it(api: Api, stack: Stack) -> None:
    """The processor's answer to the confirm is late (its webhook held back): meanwhile the order is
    pending_payment, cancel is refused, and another pay answers `pending` for the same order."""
    t = await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    async with sim_faults(api, stack, slow_next=1, slow_s=1.5, match="/confirm", webhook_hold=True):
        first = asyncio.create_task(pay(api, m.token, VISA))

        async def in_flight() -> dict[str, Any]:
            o = (await view(api, m.token)).body["order"]
            return dict(o) if o and o["status"] == "pending_payment" else {}

        o = await eventually(in_flight)
        assert_envelope(await cancel(api, m.token), 409, "PAYMENT_IN_PROGRESS")
        second = await pay(api, m.token, VISA)
        assert second.status == 200 and second.body == {"status": "pending", "order_id": o["order_id"]}, second
        paid = await first
        assert_paid(paid, new_balance="100")
        assert paid.body["order_id"] == o["order_id"]
        await sim(api, stack, "release_webhooks")
    assert await status_of(api, t, m.session_id) == "completed"
    assert len(await charged(api, stack, m.session_id)) == 1
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


# -- single use under concurrency and against the caps --------------------------------------------


async def test_ten_concurrent_pays_on_one_session_charge_once(api: Api, stack: Stack) -> None:
    """Every answer is about the one order: the charge itself, the same charge heard again
    (`success`, same transaction), that charge still in flight (`pending`, same order), or, once
    it is paid, 409 SESSION_ALREADY_CONSUMED. Never a second order, a second charge or credit."""
    t = await api.create_tenant(rate_limit_per_second=1000)
    player = email()
    m = await mint(api, t, player)
    results = await asyncio.gather(*(pay(api, m.token, VISA) for _ in range(10)))
    ok = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status != 200]
    assert ok, results
    orders = {r.body["order_id"] for r in ok}
    assert len(orders) == 1, results
    for r in ok:
        if r.body["status"] == "success":
            assert set(r.body) == PAID_KEYS and r.body["new_balance"] == "100", r
            assert r.body["currency_received"] == "100"
        else:
            assert r.body == {"status": "pending", "order_id": r.body["order_id"]}, r
    assert len({r.body["transaction_id"] for r in ok if r.body["status"] == "success"}) <= 1
    for r in refused:
        assert_envelope(r, 409, "SESSION_ALREADY_CONSUMED")
    (order_id,) = orders
    o = await order(api, t, order_id)
    assert o["status"] == "completed" and o["purchase_reference"] == f"checkout:{m.session_id}:1", o
    read = await state(api, t, m.session_id)
    assert (read.body["status"], read.body["order_id"]) == ("completed", order_id)
    intents = await session_intents(api, stack, m.session_id)
    assert [(pi["status"], pi["amount"]) for pi in intents] == [("succeeded", 1000)], intents
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_concurrent_pays_with_different_cards_answer_from_the_one_attempt(api: Api, stack: Stack) -> None:
    """A declined card and a good one sent at once (two tabs, the back button): each answer is
    about the attempt under way (its decline, its charge, `pending`, or 409 PAYMENT_IN_PROGRESS
    while its order is being stored), never an error the page API does not have. The race is
    narrow: five sessions, four pays each, make it near certain."""
    t = await api.create_tenant(rate_limit_per_second=1000)
    for _ in range(5):
        player = email()
        m = await mint(api, t, player)
        results = await asyncio.gather(*(pay(api, m.token, (DECLINED, VISA)[i % 2]) for i in range(4)))
        codes = {r.body.get("error_code") for r in results if r.status != 200}
        assert codes <= {"CARD_DECLINED", "SESSION_ALREADY_CONSUMED", "PAYMENT_IN_PROGRESS"}, results
        assert len(await charged(api, stack, m.session_id)) <= 1
        assert await balance(api, t, player) in ("0", "100")
    await check_ledger(api)


async def test_two_sessions_for_one_player_cannot_exceed_the_hourly_cap(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(spending_caps={"hourly_usd": "15.00"}, rate_limit_per_second=1000)
    player = email()
    a, b = await mint(api, t, player), await mint(api, t, player)
    results = await asyncio.gather(pay(api, a.token, VISA), pay(api, b.token, VISA))
    assert sorted(r.status for r in results) == [200, 429], results
    (won,) = [(m, r) for m, r in zip((a, b), results, strict=True) if r.status == 200]
    (lost,) = [(m, r) for m, r in zip((a, b), results, strict=True) if r.status == 429]
    assert_paid(won[1], new_balance="100")
    assert_envelope(lost[1], 429, "SPENDING_LIMIT_EXCEEDED")
    assert lost[1].body["limit"] == "hourly"
    assert await status_of(api, t, won[0].session_id) == "completed"
    # The refused session made no order and charged nothing: it stays open, and is still refused.
    assert await status_of(api, t, lost[0].session_id) == "open"
    assert (await view(api, lost[0].token)).body["order"] is None
    assert await session_intents(api, stack, lost[0].session_id) == []
    assert_envelope(await pay(api, lost[0].token, VISA), 429, "SPENDING_LIMIT_EXCEEDED")
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


# -- saved cards (the simulator's Customers and PaymentMethods) -----------------------------------


async def test_a_saved_card_is_listed_paid_with_and_removed_only_by_its_player(api: Api, stack: Stack) -> None:
    t = await api.create_tenant(rate_limit_per_second=1000)
    player, stranger = email(), email()
    card = await new_card(api, stack)
    first = await mint(api, t, player)
    assert_paid(await pay(api, first.token, card["id"], save_card=True), new_balance="100")

    second, cards = await saved_cards(api, t, player)
    assert cards == [{"id": card["id"], "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2034}]
    # Another player neither sees it nor can pay with it.
    foreign, theirs = await saved_cards(api, t, stranger)
    assert theirs == []
    refused = await pay(api, foreign.token, card["id"])
    assert_envelope(refused, 400, "INVALID_PAYMENT_METHOD")
    assert refused.body["param"] == "payment_method_id"
    assert_envelope(await remove_card(api, foreign.token, card["id"]), 404, "CARD_NOT_FOUND")
    assert await status_of(api, t, foreign.session_id) == "open"
    assert await balance(api, t, stranger) == "0"
    # The same player of another tenant has a Customer of their own: the card is not theirs there.
    elsewhere = await api.create_tenant()
    away, listed = await saved_cards(api, elsewhere, player)
    assert listed == []
    assert_envelope(await pay(api, away.token, card["id"]), 400, "INVALID_PAYMENT_METHOD")

    # The player pays with the saved card (save_card false: it is saved already).
    paid = await pay(api, second.token, card["id"])
    assert_paid(paid, new_balance="200")
    assert len(await charged(api, stack, second.session_id)) == 1
    third, cards = await saved_cards(api, t, player)
    assert [c["id"] for c in cards] == [card["id"]]
    removed = await remove_card(api, third.token, card["id"])
    assert removed.status == 200, removed
    assert removed.body == {"removed": True, "saved_cards": []}
    assert (await view(api, third.token)).body["saved_cards"] == []
    assert_envelope(await remove_card(api, third.token, card["id"]), 404, "CARD_NOT_FOUND")
    assert await balance(api, t, player) == "200"
    await check_ledger(api)


async def test_a_declined_card_is_not_saved(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    bad = await new_card(api, stack, "4000000000000002")
    m = await mint(api, t, player)
    assert_envelope(await pay(api, m.token, bad["id"], save_card=True), 402, "CARD_DECLINED")
    assert (await view(api, m.token)).body["saved_cards"] == []
    good = await new_card(api, stack, "5555555555554444")
    assert_paid(await pay(api, m.token, good["id"], save_card=False), new_balance="100")
    _, cards = await saved_cards(api, t, player)
    assert cards == []  # neither the declined card nor one paid without save_card
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_unknown_payment_method_is_400_and_the_session_stays_payable(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    unknown = await pay(api, m.token, "pm_" + secrets.token_hex(12))
    assert_envelope(unknown, 400, "INVALID_PAYMENT_METHOD")
    for body in ({}, {"payment_method_id": "pm card"}, {"payment_method_id": VISA, "coupon": "x"}):
        resp = await api.post("/checkout/api/pay", json=body, headers={"Authorization": f"Bearer {m.token}"})
        assert resp.status == 400, resp
    assert await status_of(api, t, m.session_id) == "open"
    assert_paid(await pay(api, m.token, VISA), new_balance="100")
