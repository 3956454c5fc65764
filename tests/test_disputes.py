"""Disputes through the public gateway with the real stack: a chargeback won (the purchase frozen,
then released), lost (clawed back, a debt when the player had spent), an inquiry, a dispute of part
of the charge, two tenants, and what a freeze can take (after a refund, after everything was spent,
racing spends, a refund during an inquiry). Every test checks the units, the order, purchase.disputed
against the seed's examples, and the ledger."""

from __future__ import annotations

import asyncio
from typing import Any

from devstack.stack import Stack
from tests.after_sale_support import (
    SEED_DISPUTED_CLOSED,
    SEED_DISPUTED_OPENED,
    assert_event_shape,
    balance_body,
    events_of,
    paid,
    processor_refunds,
    refund,
    spend,
    wait_order,
    wait_status,
)
from tests.helpers import Api, assert_envelope, eventually
from tests.payments_support import VISA, Events, check_ledger, details, email, order, sim

DISPUTE_CARD = "pm_card_createDispute"
INQUIRY_CARD = "pm_card_createDisputeInquiry"


async def opened(api: Api, t: dict[str, Any], order_id: str) -> dict[str, Any]:
    """The order once its dispute shows (its freeze is in place by then)."""
    return await wait_order(api, t, order_id, lambda o: bool(o["disputes"]))


async def closed(api: Api, t: dict[str, Any], order_id: str) -> dict[str, Any]:
    return await wait_order(
        api, t, order_id, lambda o: bool(o["disputes"]) and o["disputes"][-1]["outcome"] is not None
    )


async def charge_of(api: Api, stack: Stack, pi: str) -> str:
    """The PaymentIntent's charge, as the simulator has it."""
    [intent] = [i for i in (await sim(api, stack, "state"))["intents"] if i["id"] == pi]
    return str(intent["latest_charge"])


async def disputed_events(stack: Stack, t: dict[str, Any], order_id: str, count: int) -> list[dict[str, Any]]:
    """The order's purchase.disputed events once there are `count`, each shaped as the seed's
    example of its kind (the first an opening, any second a closing)."""
    found = await events_of(stack, t["tenant_id"], order_id, "purchase.disputed", count=count)
    assert len(found) == count, found
    assert_event_shape(found[0], SEED_DISPUTED_OPENED)
    for e in found[1:]:
        assert_event_shape(e, SEED_DISPUTED_CLOSED)
    return [dict(e["data"]) for e in found]


def wallet(b: dict[str, Any]) -> tuple[str, str, str]:
    """A balance read as (balance, available_balance, pending): what a freeze moves."""
    return b["balance"], b["available_balance"], b["pending"]


# -- a chargeback won -----------------------------------------------------------------------------


async def test_a_chargeback_won_freezes_the_whole_purchase_then_releases_it(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, DISPUTE_CARD)
    oid = bought["order_id"]
    o = await opened(api, t, oid)
    pi = o["payment_intent_id"]
    [d] = o["disputes"]
    assert d["dispute_id"].startswith("dp_"), d
    assert (d["status"], d["outcome"], d["reason"], d["usd_amount"], d["inquiry"]) == (
        "needs_response",
        None,
        "fraudulent",
        "10.00",
        False,
    )
    assert (d["currency_frozen"], d["currency_debited"], d["closed_at"]) == ("100", "0", None)
    assert (o["status"], o["usd_refundable"], o["currency_debited"]) == ("completed", "0.00", "0")
    frozen = await balance_body(api, t, player)
    assert wallet(frozen) == ("100", "0", "100"), frozen

    # While it is open nothing of it can be spent or refunded, and a refusal changes nothing.
    assert_envelope(await spend(api, t, player, "1"), 402, "INSUFFICIENT_BALANCE")
    assert_envelope(await refund(api, oid), 409, "ORDER_DISPUTED")
    assert_envelope(await refund(api, oid, "1.00"), 409, "ORDER_DISPUTED")
    assert await balance_body(api, t, player) == frozen
    after = await order(api, t, oid)
    assert (after["refunds"], after["usd_refunded"], after["status"]) == ([], "0.00", "completed"), after
    assert await processor_refunds(stack, pi) == []
    await check_ledger(api)

    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "won"})
    o = await closed(api, t, oid)
    [d] = o["disputes"]
    assert (d["status"], d["outcome"], d["currency_frozen"], d["currency_debited"]) == ("won", "won", "100", "0")
    assert d["closed_at"] is not None
    assert (o["status"], o["usd_refundable"], o["currency_debited"]) == ("completed", "10.00", "0")
    assert wallet(await balance_body(api, t, player)) == ("100", "100", "0")

    charge = await charge_of(api, stack, pi)
    opening, closing = await disputed_events(stack, t, oid, 2)
    base = {
        "order_id": oid,
        "transaction_id": bought["transaction_id"],
        "payment_intent_id": pi,
        "charge_id": charge,
        "dispute_id": d["dispute_id"],
        "reason": "fraudulent",
        "usd_amount": "10.00",
        "inquiry": False,
    }
    assert opening == {**base, "dispute_status": "needs_response", "currency_frozen": "100"}
    assert closing == {
        **base,
        "dispute_status": "won",
        "currency_debited": "0",
        "currency_released": "100",
        "new_balance": "100",
        "order_status": "completed",
    }

    # Spendable again, and refundable again.
    ok = await spend(api, t, player, "30")
    assert ok.status == 200 and ok.body["new_balance"] == "70", ok
    r = await refund(api, oid, "5.00")
    assert r.status == 201 and r.body["refund"]["currency_debited"] == "50", r
    assert wallet(await balance_body(api, t, player)) == ("20", "20", "0")
    await check_ledger(api)


# -- a chargeback lost ----------------------------------------------------------------------------


async def test_a_chargeback_lost_claws_the_currency_back(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, DISPUTE_CARD)
    oid = bought["order_id"]
    o = await opened(api, t, oid)
    pi = o["payment_intent_id"]
    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "lost"})
    o = await wait_status(api, t, oid, "disputed_lost")
    [d] = o["disputes"]
    assert (d["status"], d["outcome"], d["currency_frozen"], d["currency_debited"]) == ("lost", "lost", "100", "100")
    assert (o["currency_debited"], o["usd_refundable"], o["usd_refunded"]) == ("100", "0.00", "0.00")
    assert [(h["from"], h["to"]) for h in o["history"]][-1] == ("completed", "disputed_lost")
    assert wallet(await balance_body(api, t, player)) == ("0", "0", "0")

    _, closing = await disputed_events(stack, t, oid, 2)
    assert {k: closing[k] for k in SEED_DISPUTED_CLOSED} == {
        "order_id": oid,
        "dispute_id": d["dispute_id"],
        "dispute_status": "lost",
        "currency_debited": "100",
        "new_balance": "0",
    }
    assert (closing["currency_released"], closing["order_status"]) == ("0", "disputed_lost")
    # The bank has taken the money back: nothing is left to refund.
    assert_envelope(await refund(api, oid), 409, "ORDER_NOT_REFUNDABLE")
    assert await processor_refunds(stack, pi) == []
    await check_ledger(api)


async def test_a_chargeback_lost_after_spending_leaves_a_debt_the_next_purchase_repays(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    assert (await spend(api, t, player, "60")).status == 200
    pi = (await order(api, t, oid))["payment_intent_id"]
    await sim(api, stack, "dispute", {"payment_intent": pi})
    o = await opened(api, t, oid)
    # Only what is left can be frozen.
    assert o["disputes"][0]["currency_frozen"] == "40", o
    assert wallet(await balance_body(api, t, player)) == ("40", "0", "40")
    assert_envelope(await spend(api, t, player, "1"), 402, "INSUFFICIENT_BALANCE")
    await check_ledger(api)

    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "lost"})
    o = await wait_status(api, t, oid, "disputed_lost")
    assert (o["disputes"][0]["currency_debited"], o["currency_debited"]) == ("100", "100"), o
    b = await balance_body(api, t, player)
    assert (b["balance"], b["available_balance"], b["pending"], b["debt"]) == ("-60", "-60", "0", "60"), b
    _, closing = await disputed_events(stack, t, oid, 2)
    assert (closing["currency_debited"], closing["new_balance"], closing["currency_released"]) == ("100", "-60", "0")
    assert_envelope(await spend(api, t, player, "1"), 402, "PLAYER_IN_DEBT")
    assert await balance_body(api, t, player) == b  # the refusal changed nothing
    await check_ledger(api)

    _, repaid = await paid(api, t, player=player)
    assert (repaid["debt_repaid"], repaid["currency_credited"], repaid["new_balance"]) == ("60", "40", "40"), repaid
    [completed] = await events_of(stack, t["tenant_id"], repaid["order_id"], "purchase.completed")
    assert (completed["data"]["debt_repaid"], completed["data"]["currency_credited"]) == ("60", "40")
    assert (await order(api, t, repaid["order_id"]))["debt_repaid"] == "60"
    b = await balance_body(api, t, player)
    assert (b["balance"], b["debt"]) == ("40", "0"), b
    ok = await spend(api, t, player, "40")
    assert ok.status == 200 and ok.body["new_balance"] == "0", ok
    await check_ledger(api)


# -- an inquiry, and a dispute of part of the charge ----------------------------------------------


async def test_an_inquiry_closed_without_a_chargeback_releases_its_hold(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, INQUIRY_CARD)
    oid = bought["order_id"]
    o = await opened(api, t, oid)
    pi = o["payment_intent_id"]
    [d] = o["disputes"]
    assert (d["status"], d["inquiry"], d["outcome"], d["currency_frozen"]) == (
        "warning_needs_response",
        True,
        None,
        "100",
    )
    assert wallet(await balance_body(api, t, player)) == ("100", "0", "100")
    assert_envelope(await spend(api, t, player, "1"), 402, "INSUFFICIENT_BALANCE")
    assert_envelope(await refund(api, oid), 409, "ORDER_DISPUTED")  # an inquiry is a dispute not closed
    await check_ledger(api)

    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "warning_closed"})
    o = await closed(api, t, oid)
    [d] = o["disputes"]
    assert (d["status"], d["outcome"], d["currency_debited"]) == ("warning_closed", "warning_closed", "0")
    assert o["status"] == "completed"
    assert wallet(await balance_body(api, t, player)) == ("100", "100", "0")
    opening, closing = await disputed_events(stack, t, oid, 2)
    assert (opening["dispute_status"], opening["inquiry"], opening["currency_frozen"]) == (
        "warning_needs_response",
        True,
        "100",
    )
    assert (closing["dispute_status"], closing["currency_released"], closing["currency_debited"]) == (
        "warning_closed",
        "100",
        "0",
    )
    assert (closing["new_balance"], closing["order_status"], closing["inquiry"]) == ("100", "completed", True)
    assert (await spend(api, t, player, "100")).status == 200
    await check_ledger(api)


async def test_a_dispute_of_part_of_the_charge_freezes_and_takes_its_share(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    await sim(api, stack, "dispute", {"payment_intent": pi, "amount": 400, "reason": "product_not_received"})
    o = await opened(api, t, oid)
    [d] = o["disputes"]
    assert (d["usd_amount"], d["currency_frozen"], d["reason"]) == ("4.00", "40", "product_not_received"), d
    assert wallet(await balance_body(api, t, player)) == ("100", "60", "40")
    # The rest is the player's to spend, and no more.
    assert (await spend(api, t, player, "60")).status == 200
    assert_envelope(await spend(api, t, player, "0.01"), 402, "INSUFFICIENT_BALANCE")
    assert wallet(await balance_body(api, t, player)) == ("40", "0", "40")
    [opening] = await disputed_events(stack, t, oid, 1)
    assert (opening["usd_amount"], opening["currency_frozen"]) == ("4.00", "40")
    await check_ledger(api)

    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "lost"})
    o = await wait_status(api, t, oid, "disputed_lost")
    assert (o["disputes"][0]["currency_debited"], o["currency_debited"]) == ("40", "40"), o
    assert wallet(await balance_body(api, t, player)) == ("0", "0", "0")
    _, closing = await disputed_events(stack, t, oid, 2)
    assert (closing["currency_debited"], closing["new_balance"], closing["usd_amount"]) == ("40", "0", "4.00")
    await check_ledger(api)


# -- tenants --------------------------------------------------------------------------------------


async def test_a_dispute_on_one_tenants_order_never_touches_another_tenant(api: Api, stack: Stack) -> None:
    a, b = await api.create_tenant(), await api.create_tenant()
    player = email()  # the same player in both games
    _, in_a = await paid(api, a, DISPUTE_CARD, player=player)
    _, in_b = await paid(api, b, VISA, player=player)
    o = await opened(api, a, in_a["order_id"])
    assert wallet(await balance_body(api, a, player)) == ("100", "0", "100")
    assert wallet(await balance_body(api, b, player)) == ("100", "100", "0")
    # B cannot see A's order, nor refund it through its own view; its own order is untouched.
    assert_envelope(await details(api, b, in_a["order_id"]), 404, "ORDER_NOT_FOUND")
    other = await order(api, b, in_b["order_id"])
    assert (other["status"], other["disputes"], other["usd_refundable"]) == ("completed", [], "10.00")

    await sim(api, stack, "dispute", {"payment_intent": o["payment_intent_id"], "close": "lost"})
    await wait_status(api, a, in_a["order_id"], "disputed_lost")
    assert wallet(await balance_body(api, a, player)) == ("0", "0", "0")
    assert wallet(await balance_body(api, b, player)) == ("100", "100", "0")
    assert (await spend(api, b, player, "100")).status == 200
    for e in await events_of(stack, a["tenant_id"], in_a["order_id"], "purchase.disputed", count=2):
        assert e["tenant_id"] == a["tenant_id"], e
    # B's stream has its own purchase and nothing of A's dispute.
    ev = Events(stack, b["tenant_id"])
    await ev.collect_until(in_b["order_id"], "purchase.completed")
    assert [e["event_type"] for e in ev.seen.values()] == ["purchase.completed"], ev.seen
    assert [e["data"]["order_id"] for e in ev.seen.values()] == [in_b["order_id"]]
    await check_ledger(api)


# -- what the freeze can take ---------------------------------------------------------------------


async def test_a_dispute_after_a_partial_refund_freezes_and_takes_only_what_the_refund_left(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    assert (await refund(api, oid, "4.00")).status == 201
    pi = (await order(api, t, oid))["payment_intent_id"]
    await sim(api, stack, "dispute", {"payment_intent": pi})
    o = await opened(api, t, oid)
    assert o["disputes"][0]["currency_frozen"] == "60", o
    assert wallet(await balance_body(api, t, player)) == ("60", "0", "60")
    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "lost"})
    o = await wait_status(api, t, oid, "disputed_lost")
    assert (o["disputes"][0]["currency_debited"], o["currency_debited"], o["usd_refunded"]) == ("60", "100", "4.00")
    assert wallet(await balance_body(api, t, player)) == ("0", "0", "0")
    _, closing = await disputed_events(stack, t, oid, 2)
    assert (closing["currency_debited"], closing["new_balance"]) == ("60", "0")
    await check_ledger(api)


async def test_a_dispute_of_a_purchase_already_spent_freezes_nothing_and_its_loss_is_a_debt(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    assert (await spend(api, t, player, "100")).status == 200
    pi = (await order(api, t, oid))["payment_intent_id"]
    await sim(api, stack, "dispute", {"payment_intent": pi})
    o = await opened(api, t, oid)
    assert o["disputes"][0]["currency_frozen"] == "0", o
    [opening] = await disputed_events(stack, t, oid, 1)
    assert opening["currency_frozen"] == "0"
    assert wallet(await balance_body(api, t, player)) == ("0", "0", "0")
    await check_ledger(api)
    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "lost"})
    await wait_status(api, t, oid, "disputed_lost")
    assert (await balance_body(api, t, player))["balance"] == "-100"
    _, closing = await disputed_events(stack, t, oid, 2)
    assert (closing["currency_debited"], closing["new_balance"], closing["currency_released"]) == ("100", "-100", "0")
    await check_ledger(api)


async def test_spends_racing_a_dispute_never_take_what_it_froze(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    await sim(api, stack, "dispute", {"payment_intent": pi})  # its event on its way to us
    answers = await asyncio.gather(*(spend(api, t, player, "10") for _ in range(8)))
    o = await opened(api, t, oid)
    refused = [a for a in answers if a.status != 200]
    assert all(a.body["error_code"] == "INSUFFICIENT_BALANCE" for a in refused), refused
    left = str(100 - 10 * (len(answers) - len(refused)))
    # Whatever the spends took before the freeze, it holds all the rest, and none is spent after.
    assert o["disputes"][0]["currency_frozen"] == left, (o, answers)
    assert wallet(await balance_body(api, t, player)) == (left, "0", left)
    await check_ledger(api)
    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "won"})
    await closed(api, t, oid)
    assert wallet(await balance_body(api, t, player)) == (left, left, "0")
    await check_ledger(api)


async def test_a_dashboard_refund_during_an_inquiry_leaves_no_freeze_on_later_currency(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, INQUIRY_CARD)
    oid = bought["order_id"]
    o = await opened(api, t, oid)
    pi = o["payment_intent_id"]
    await sim(api, stack, "refund", {"payment_intent": pi})  # the processor lets an inquiry be refunded
    o = await wait_status(api, t, oid, "refunded")
    assert [(r["source"], r["currency_debited"], r["new_balance"]) for r in o["refunds"]] == [("processor", "100", "0")]
    await check_ledger(api)
    # Nothing of the disputed purchase is left to freeze, so nothing is frozen; the next one is spendable.
    assert wallet(await balance_body(api, t, player)) == ("0", "0", "0")
    _, again = await paid(api, t, player=player)
    assert again["new_balance"] == "100", again
    assert (await spend(api, t, player, "100")).status == 200
    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "warning_closed"})
    await closed(api, t, oid)
    assert wallet(await balance_body(api, t, player)) == ("0", "0", "0")
    await check_ledger(api)


async def test_a_partial_dashboard_refund_during_an_inquiry_keeps_the_rest_frozen(api: Api, stack: Stack) -> None:
    """The refund's write voids the freeze and the rest of the disputed currency is frozen again:
    30 refunded of 100, 70 still frozen, nothing spendable until the inquiry closes."""
    t = await api.create_tenant()
    player, bought = await paid(api, t, INQUIRY_CARD)
    oid = bought["order_id"]
    o = await opened(api, t, oid)
    await sim(api, stack, "refund", {"payment_intent": o["payment_intent_id"], "amount": 300})

    async def refrozen() -> dict[str, Any]:
        got = await order(api, t, oid)
        done = got["refunds"] and got["refunds"][0]["status"] == "succeeded"
        return got if done and got["disputes"][0]["currency_frozen"] == "70" else {}

    o = await eventually(refrozen, timeout_s=15)
    assert o["status"] == "completed" and o["refunds"][0]["currency_debited"] == "30", o
    assert wallet(await balance_body(api, t, player)) == ("70", "0", "70")
    assert (await spend(api, t, player, "1")).status == 402
    await check_ledger(api)
    await sim(api, stack, "dispute", {"payment_intent": o["payment_intent_id"], "close": "warning_closed"})
    await closed(api, t, oid)
    assert wallet(await balance_body(api, t, player)) == ("70", "70", "0")
    await check_ledger(api)
