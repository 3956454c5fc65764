"""Refunds through the public gateway with the real stack: an operator's (whole, partial, refused,
replayed, concurrent), a player left in debt, and refunds made in the processor's dashboard, alone,
racing an operator's, delivered twice, out of order, or before the payment's own success. Every
test checks the units, the order, the processor's own refunds and the ledger."""

from __future__ import annotations

import asyncio

from devstack.stack import Stack
from tests.after_sale_support import (
    SEED_REFUNDED,
    admin_order,
    assert_event_shape,
    balance,
    balance_body,
    check_ledger,
    debits,
    deliveries,
    events_of,
    inbox_of,
    key,
    operator,
    order_event_types,
    paid,
    processor_refunds,
    refund,
    sim_refund,
    spend,
    units,
    wait_refunds,
    wait_status,
)
from tests.helpers import Api, assert_envelope, eventually
from tests.payments_support import DECLINED, THREE_DS, buy, details, email, order, sim, sim_faults

# -- an operator's refunds ----------------------------------------------------------------------------


async def test_a_full_refund_debits_everything_and_emits_the_seeds_event(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    resp = await refund(api, oid, reason="requested_by_customer")
    assert resp.status == 201, resp
    assert resp.body["duplicate"] is False
    r, o = resp.body["refund"], resp.body["order"]
    assert r["status"] == "succeeded" and r["source"] == "admin" and r["reason"] == "requested_by_customer"
    assert (r["usd_amount"], r["currency_debited"], r["new_balance"]) == ("10.00", "100", "0")
    assert r["processor_refund_id"].startswith("re_") and r["transaction_id"].startswith("txn_")
    assert r["failure_message"] is None and r["applied_at"] is not None
    assert o["status"] == "refunded" and o["tenant_id"] == t["tenant_id"]
    assert (o["usd_refunded"], o["usd_refundable"], o["currency_debited"]) == ("10.00", "0.00", "100")
    last = o["history"][-1]
    assert (last["from"], last["to"], last["source"]) == ("completed", "refunded", "admin")
    assert await balance(api, t, player) == "0"
    partner = await order(api, t, oid)
    assert partner["status"] == "refunded" and [x["refund_id"] for x in partner["refunds"]] == [r["refund_id"]]
    assert "operator_id" not in partner["refunds"][0]  # the partner never sees who at INVO did it
    [made] = await processor_refunds(stack, partner["payment_intent_id"])
    assert (made["id"], made["amount"], made["metadata"]["refund_id"]) == (
        r["processor_refund_id"],
        1000,
        r["refund_id"],
    )

    [event] = await events_of(stack, t["tenant_id"], oid, "purchase.refunded")
    assert_event_shape(event, SEED_REFUNDED)
    assert event["tenant_id"] == t["tenant_id"]
    assert event["data"] == {
        "order_id": oid,
        "transaction_id": bought["transaction_id"],
        "payment_intent_id": partner["payment_intent_id"],
        "charge_id": partner["charge_id"],
        "usd_refunded": "10.00",
        "usd_original": "10.00",
        "fully_refunded": True,
        "currency_debited": "100",
        "new_balance": "0",
        "currency_name": "Gold Coins",
        "order_status": "refunded",
        "refund_id": r["refund_id"],
        "refund_transaction_id": r["transaction_id"],
        "usd_refunded_total": "10.00",
        "reason": "requested_by_customer",
        "source": "admin",
    }
    assert partner["charge_id"].startswith("ch_")
    await check_ledger(api)


async def test_two_partial_refunds_then_the_rest_add_up_to_the_order(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    first = await refund(api, oid, "3.33")
    assert first.status == 201, first
    assert (first.body["refund"]["currency_debited"], first.body["refund"]["new_balance"]) == ("33.30", "66.70")
    assert first.body["order"]["status"] == "completed" and first.body["order"]["usd_refundable"] == "6.67"
    second = await refund(api, oid, "3.33", reason="duplicate")
    assert second.status == 201, second
    assert (second.body["refund"]["currency_debited"], second.body["refund"]["new_balance"]) == ("33.30", "33.40")
    assert second.body["order"]["status"] == "completed" and second.body["order"]["usd_refunded"] == "6.66"
    assert await balance(api, t, player) == "33.40"
    rest = await refund(api, oid)
    assert rest.status == 201, rest
    assert (rest.body["refund"]["usd_amount"], rest.body["refund"]["currency_debited"]) == ("3.34", "33.40")
    o = rest.body["order"]
    assert o["status"] == "refunded" and (o["usd_refunded"], o["usd_refundable"]) == ("10.00", "0.00")
    assert debits(o) == ["33.30", "33.30", "33.40"]
    assert sum(units(d) for d in debits(o)) == units(o["currency_amount"]) == units(o["currency_debited"])
    assert await balance(api, t, player) == "0"
    assert [m["amount"] for m in await processor_refunds(stack, o["payment_intent_id"])] == [333, 333, 334]

    events = await events_of(stack, t["tenant_id"], oid, "purchase.refunded", count=3)
    got = [(e["data"]["usd_refunded"], e["data"]["currency_debited"], e["data"]["fully_refunded"]) for e in events]
    assert got == [("3.33", "33.30", False), ("3.33", "33.30", False), ("3.34", "33.40", True)]
    assert [e["data"]["order_status"] for e in events] == ["completed", "completed", "refunded"]
    assert [e["data"]["usd_refunded_total"] for e in events] == ["3.33", "6.66", "10.00"]
    assert [e["data"]["reason"] for e in events] == ["requested_by_customer", "duplicate", "requested_by_customer"]
    await check_ledger(api)


async def test_partial_refunds_of_an_odd_amount(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, usd="7.77")
    oid = bought["order_id"]
    assert bought["currency_amount"] == "77.70"
    for usd, debited, left in (("0.01", "0.10", "77.60"), ("2.89", "28.90", "48.70"), (None, "48.70", "0")):
        resp = await refund(api, oid, usd)
        assert resp.status == 201, resp
        assert (resp.body["refund"]["currency_debited"], resp.body["refund"]["new_balance"]) == (debited, left)
    o = await order(api, t, oid)
    assert o["status"] == "refunded" and debits(o) == ["0.10", "28.90", "48.70"]
    assert [r["usd_amount"] for r in o["refunds"]] == ["0.01", "2.89", "4.87"]
    assert sum(units(d) for d in debits(o)) == units("77.70")
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_refusals_change_nothing(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    assert (await refund(api, oid, "3.00")).status == 201

    over = await refund(api, oid, "7.01")
    assert_envelope(over, 400, "REFUND_EXCEEDS_REMAINING")
    assert over.body["usd_refundable"] == "7.00"
    zero = await refund(api, oid, "0.00")
    assert_envelope(zero, 400, "INVALID_AMOUNT")
    assert zero.body["param"] == "usd_amount"
    assert_envelope(await refund(api, oid, "1.00", reason="changed_my_mind"), 400, "INVALID_PARAMETER")
    reused = await refund(api, oid, "1.00", idempotency_key="same")
    assert reused.status == 201, reused
    assert_envelope(await refund(api, oid, "2.00", idempotency_key="same"), 400, "IDEMPOTENCY_KEY_REUSED")
    unknown = await refund(api, "ord_" + "0" * 26)
    assert_envelope(unknown, 404, "ORDER_NOT_FOUND")
    no_key = await api.post(f"/admin/orders/{oid}/refunds", admin=True, json={"usd_amount": "1.00"})
    assert no_key.status == 400 and no_key.body["param"] == "idempotency_key", no_key
    after = await order(api, t, oid)
    assert [r["usd_amount"] for r in after["refunds"]] == ["3.00", "1.00"]  # the refused left no trace
    assert (after["usd_refunded"], after["usd_refundable"]) == ("4.00", "6.00")
    assert await balance(api, t, player) == "60"
    assert [m["amount"] for m in await processor_refunds(stack, after["payment_intent_id"])] == [300, 100]

    declined = await buy(api, t, email(), payment_method_id=DECLINED)
    assert_envelope(declined, 402, "CARD_DECLINED")
    assert_envelope(await refund(api, declined.body["order_id"]), 409, "ORDER_NOT_REFUNDABLE")
    challenged = await buy(api, t, email(), payment_method_id=THREE_DS)
    assert challenged.body["status"] == "requires_action", challenged
    assert_envelope(await refund(api, challenged.body["order_id"]), 409, "ORDER_NOT_REFUNDABLE")
    assert (await refund(api, oid)).status == 201
    assert_envelope(await refund(api, oid, "0.01"), 409, "ORDER_NOT_REFUNDABLE")
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_roles_and_tenants(api: Api, stack: Stack) -> None:
    t, other = await api.create_tenant(), await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    for role in ("viewer", "support"):
        op = await operator(api, role)
        assert_envelope(await refund(api, oid, "1.00", credential=op["credential"]), 403, "OPERATOR_ROLE_FORBIDDEN")
    assert await balance(api, t, player) == "100"
    finance = await operator(api, "finance")
    done = await refund(api, oid, "1.00", credential=finance["credential"])
    assert done.status == 201, done
    assert done.body["refund"]["operator_id"] == finance["operator_id"]
    assert (await admin_order(api, oid))["refunds"][0]["operator_id"] == finance["operator_id"]
    assert await balance(api, t, player) == "90"
    # The order and its refunds are the tenant's alone.
    assert_envelope(await details(api, other, oid), 404, "ORDER_NOT_FOUND")
    assert len((await order(api, t, oid))["refunds"]) == 1
    await check_ledger(api)


# -- a player in debt ---------------------------------------------------------------------------------


async def test_a_refund_after_everything_was_spent_leaves_a_debt_the_next_purchase_repays(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    assert (await spend(api, t, player, "100")).status == 200
    r = await refund(api, bought["order_id"])
    assert r.status == 201 and r.body["refund"]["new_balance"] == "-100", r
    b = await balance_body(api, t, player)
    assert (b["balance"], b["available_balance"], b["debt"]) == ("-100", "-100", "100"), b

    refused = await spend(api, t, player, "1")
    assert_envelope(refused, 402, "PLAYER_IN_DEBT")
    assert (await balance_body(api, t, player))["balance"] == "-100"

    _, partly = await paid(api, t, usd="5.00", player=player)
    assert (partly["debt_repaid"], partly["currency_credited"], partly["new_balance"]) == ("50", "0", "-50")
    assert_envelope(await spend(api, t, player, "1"), 402, "PLAYER_IN_DEBT")
    _, repaid = await paid(api, t, usd="15.00", player=player)
    assert (repaid["debt_repaid"], repaid["currency_credited"], repaid["new_balance"]) == ("50", "100", "100")
    [completed] = await events_of(stack, t["tenant_id"], repaid["order_id"], "purchase.completed")
    assert (completed["data"]["debt_repaid"], completed["data"]["currency_credited"]) == ("50", "100")
    assert (await order(api, t, repaid["order_id"]))["debt_repaid"] == "50"
    b = await balance_body(api, t, player)
    assert (b["balance"], b["debt"]) == ("100", "0"), b
    assert (await spend(api, t, player, "10")).status == 200
    assert await balance(api, t, player) == "90"
    await check_ledger(api)


async def test_a_wallet_in_debt_shows_its_debt_on_balance_reads(api: Api) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    assert (await spend(api, t, player, "60")).status == 200
    assert (await refund(api, bought["order_id"])).status == 201
    b = await balance_body(api, t, player)
    assert (b["balance"], b["debt"]) == ("-60", "60"), b


# -- one refund however many times it is asked --------------------------------------------------------


async def test_the_same_refund_sent_twice_then_ten_times_at_once_is_one_refund(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    first = await refund(api, oid, "2.00", idempotency_key="once")
    again = await refund(api, oid, "2.00", idempotency_key="once")
    assert (first.status, again.status, again.body["duplicate"]) == (201, 200, True), again
    assert again.body["refund"] == first.body["refund"]

    k = key()
    answers = await asyncio.gather(*(refund(api, oid, "4.00", idempotency_key=k) for _ in range(10)))
    assert sorted(a.status for a in answers) == [200] * 9 + [201], answers
    assert len({a.body["refund"]["refund_id"] for a in answers}) == 1
    assert {a.body["refund"]["status"] for a in answers} == {"succeeded"}
    assert [a.body["duplicate"] for a in answers].count(False) == 1

    made = await processor_refunds(stack, bought_pi := (await order(api, t, oid))["payment_intent_id"])
    assert sorted(m["amount"] for m in made) == [200, 400], made
    o = await wait_refunds(api, t, oid, 2)
    assert len(o["refunds"]) == 2 and debits(o) == ["20", "40"]
    assert await balance(api, t, player) == "40"
    assert len(await events_of(stack, t["tenant_id"], oid, "purchase.refunded", count=2)) == 2

    # A key is the order's: the same one on another order is another refund.
    _, other = await paid(api, t, player=player)
    assert (await refund(api, other["order_id"], "2.00", idempotency_key="once")).status == 201
    assert await balance(api, t, player) == "120"

    # Ten different refunds of $2 racing for the $4 that remains: two are made, eight refused.
    # A loser that arrives after both winners finished finds the order refunded (409), one that arrives
    # while they run finds nothing left (400): which one each meets is down to arrival order.
    raced = await asyncio.gather(*(refund(api, oid, "2.00") for _ in range(10)))
    assert sorted(a.status for a in raced)[:2] == [201, 201] and len(raced) == 10, raced
    refused = {(a.status, a.body["error_code"]) for a in raced if a.status != 201}
    assert refused <= {(400, "REFUND_EXCEEDS_REMAINING"), (409, "ORDER_NOT_REFUNDABLE")}, raced
    assert sum(a.status == 201 for a in raced) == 2
    assert len(await processor_refunds(stack, bought_pi)) == 4
    assert (await order(api, t, oid))["status"] == "refunded"
    assert await balance(api, t, player) == "80"  # what the other order left
    await check_ledger(api)


async def test_a_refund_the_processor_did_not_answer_is_finished_by_a_retry_or_the_recovery_loop(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    async with sim_faults(api, stack, fail_next=1, match="POST /v1/refunds"):
        down = await refund(api, oid, "4.00", idempotency_key="k-retried")
    assert_envelope(down, 503, "PROCESSOR_UNAVAILABLE")
    o = await order(api, t, oid)
    assert [(r["status"], r["usd_amount"]) for r in o["refunds"]] == [("pending", "4.00")]
    assert o["usd_refundable"] == "6.00"  # reserved while it is unfinished
    assert_envelope(await refund(api, oid, "6.01"), 400, "REFUND_EXCEEDS_REMAINING")
    assert await balance(api, t, player) == "100" and await processor_refunds(stack, pi) == []
    again = await refund(api, oid, "4.00", idempotency_key="k-retried")
    assert again.status == 200 and again.body["duplicate"] is True, again
    assert (again.body["refund"]["status"], again.body["refund"]["currency_debited"]) == ("succeeded", "40")
    assert await balance(api, t, player) == "60"

    async with sim_faults(api, stack, fail_next=1, match="POST /v1/refunds"):
        assert_envelope(await refund(api, oid, "1.00"), 503, "PROCESSOR_UNAVAILABLE")
    # Nobody retries: the recovery loop does, once the refund's lease is out.
    o = await wait_refunds(api, t, oid, 2, timeout_s=40)
    assert debits(o) == ["40", "10"] and o["usd_refundable"] == "5.00"
    assert [m["amount"] for m in await processor_refunds(stack, pi)] == [400, 100]
    assert await balance(api, t, player) == "50"
    assert len(await events_of(stack, t["tenant_id"], oid, "purchase.refunded", count=2)) == 2
    await check_ledger(api)


# -- refunds made in the processor's dashboard --------------------------------------------------------


async def test_a_dashboard_refund_is_applied_once_as_the_processors(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    made = await sim(api, stack, "refund", {"payment_intent": pi, "amount": 250})
    o = await wait_refunds(api, t, oid, 1)
    [r] = o["refunds"]
    assert (r["source"], r["processor_refund_id"], r["usd_amount"]) == ("processor", made["id"], "2.50")
    assert r["currency_debited"] == "25"
    assert o["status"] == "completed" and o["usd_refundable"] == "7.50"
    assert await balance(api, t, player) == "75"
    [event] = await events_of(stack, t["tenant_id"], oid, "purchase.refunded")
    assert_event_shape(event, SEED_REFUNDED)
    data = event["data"]
    assert (data["source"], data["usd_refunded"], data["fully_refunded"]) == ("processor", "2.50", False)
    # The rest, from the dashboard too: the order is refunded.
    await sim(api, stack, "refund", {"payment_intent": pi})
    o = await wait_status(api, t, oid, "refunded")
    assert debits(o) == ["25", "75"] and o["history"][-1]["source"] == "processor"
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_a_dashboard_refund_racing_an_operators_applies_exactly_the_processors(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    (status, _), mine = await asyncio.gather(sim_refund(api, stack, pi, 300), refund(api, oid, "5.00"))
    assert (status, mine.status) == (200, 201), mine
    o = await wait_refunds(api, t, oid, 2)
    made = await processor_refunds(stack, pi)
    assert sorted(r["processor_refund_id"] for r in o["refunds"]) == sorted(m["id"] for m in made)
    assert sorted(r["usd_amount"] for r in o["refunds"]) == ["3.00", "5.00"]
    assert (o["usd_refunded"], o["usd_refundable"], o["currency_debited"]) == ("8.00", "2.00", "80")
    assert await balance(api, t, player) == "20"

    # Both for all that remains: whichever the processor makes first is the only one.
    (status, body), mine = await asyncio.gather(sim_refund(api, stack, pi), refund(api, oid))
    assert sorted([status, mine.status]) in ([200, 400], [201, 400]), (status, body, mine)
    if mine.status == 400:
        assert_envelope(mine, 400, "REFUND_EXCEEDS_REMAINING")
    o = await wait_status(api, t, oid, "refunded")
    o = await wait_refunds(api, t, oid, 3)
    assert len(await processor_refunds(stack, pi)) == 3
    assert [r["status"] for r in o["refunds"]].count("succeeded") == 3
    assert sum(units(d) for d in debits(o)) == units("100")
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_every_charge_refunded_delivered_twice_is_applied_once(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    seen = await deliveries(api, stack, "charge.refunded")
    async with sim_faults(api, stack, webhook_duplicate=True):
        assert (await refund(api, oid, "2.00")).status == 201
        await sim(api, stack, "refund", {"payment_intent": pi, "amount": 300})

        async def delivered_twice() -> bool:
            now = await deliveries(api, stack, "charge.refunded")
            return sorted(n for e, n in now.items() if e not in seen) == [2, 2]

        await eventually(delivered_twice, timeout_s=15)
    o = await wait_refunds(api, t, oid, 2)
    assert len(o["refunds"]) == 2 and debits(o) == ["20", "30"]
    assert sorted(r["source"] for r in o["refunds"]) == ["admin", "processor"]
    assert await balance(api, t, player) == "50"
    assert len(await events_of(stack, t["tenant_id"], oid, "purchase.refunded", count=2)) == 2
    await check_ledger(api)


async def test_refunds_held_then_released_newest_first_are_each_applied_once(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    async with sim_faults(api, stack, webhook_hold=True):
        assert (await refund(api, oid, "2.00")).status == 201  # applied from the processor's answer
        await sim(api, stack, "refund", {"payment_intent": pi, "amount": 300})
        await sim(api, stack, "refund", {"payment_intent": pi, "amount": 100})
        assert (await sim(api, stack, "release_webhooks", {"order": "reverse"}))["released"] == 3
    o = await wait_refunds(api, t, oid, 3)
    assert len(o["refunds"]) == 3 and sorted(debits(o)) == ["10", "20", "30"]
    assert (o["usd_refunded"], o["usd_refundable"]) == ("6.00", "4.00")
    assert await balance(api, t, player) == "40"
    assert len(await events_of(stack, t["tenant_id"], oid, "purchase.refunded", count=3)) == 3
    await check_ledger(api)


async def test_a_refund_the_dashboard_made_unseen_is_refused_then_applied(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    async with sim_faults(api, stack, webhook_hold=True):
        await sim(api, stack, "refund", {"payment_intent": pi})  # its charge.refunded held
        late = await refund(api, oid)  # we still think $10 remain; the processor says none does
        assert_envelope(late, 400, "REFUND_EXCEEDS_REMAINING")
        assert (await order(api, t, oid))["refunds"][0]["status"] == "failed"
        assert await balance(api, t, player) == "100"
        assert (await sim(api, stack, "release_webhooks"))["released"] == 1
    o = await wait_status(api, t, oid, "refunded")
    assert [(r["status"], r["source"]) for r in o["refunds"]] == [("failed", "admin"), ("succeeded", "processor")]
    assert debits(o) == ["100"] and len(await processor_refunds(stack, pi)) == 1
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_a_refund_that_arrives_before_the_payments_success_is_applied_after_it(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    oid, pi = start.body["order_id"], start.body["payment_intent_id"]
    async with sim_faults(api, stack, webhook_hold=True):
        await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
        await sim(api, stack, "refund", {"payment_intent": pi})
        released = await sim(api, stack, "release_webhooks", {"order": "reverse"})  # the refund first
        assert released["released"] >= 2
    o = await wait_status(api, t, oid, "refunded")
    assert [(r["source"], r["usd_amount"], r["currency_debited"]) for r in o["refunds"]] == [
        ("processor", "10.00", "100")
    ]
    # It came first, waited for the payment, and was applied once the payment's success had been.
    inbox = {e["type"]: e for e in await inbox_of(stack, pi)}
    assert inbox["charge.refunded"]["waiting_on"] == f"paid:{pi}", inbox
    assert inbox["charge.refunded"]["handled"] and inbox["payment_intent.succeeded"]["handled"], inbox
    assert list(inbox).index("charge.refunded") < list(inbox).index("payment_intent.succeeded"), inbox
    assert await balance(api, t, player) == "0"
    got = await order_event_types(stack, t["tenant_id"], oid, "purchase.refunded")
    assert got == ["purchase.completed", "purchase.refunded"]
    await check_ledger(api)
