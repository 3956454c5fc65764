"""Early fraud warnings through the public gateway with the real stack: recorded once and announced
as purchase.fraud_warning with the seed's fields; refunded at once when the tenant asks for it;
`monitor` when the warning is not actionable or nothing is left to refund."""

from __future__ import annotations

from typing import Any

from devstack.stack import Stack
from tests.after_sale_support import (
    SEED_FRAUD_WARNING,
    SEED_REFUNDED,
    assert_event_shape,
    auto_refund,
    events_of,
    order_event_types,
    paid,
    processor_refunds,
    refund,
    wait_order,
    wait_status,
)
from tests.helpers import Api, eventually
from tests.payments_support import balance, check_ledger, order, sim, sim_faults

EFW_CARD = "pm_card_radarEarlyFraudWarning"


async def warned(api: Api, t: dict[str, Any], order_id: str) -> dict[str, Any]:
    """The order once it lists a fraud warning and no refund is in flight."""
    return await wait_order(
        api,
        t,
        order_id,
        lambda o: bool(o["fraud_warnings"]) and all(r["status"] != "pending" for r in o["refunds"]),
    )


async def charge_of(api: Api, stack: Stack, pi: str) -> str:
    """The PaymentIntent's charge, as the simulator has it."""
    [intent] = [i for i in (await sim(api, stack, "state"))["intents"] if i["id"] == pi]
    return str(intent["latest_charge"])


async def warning_event(stack: Stack, t: dict[str, Any], order_id: str) -> dict[str, Any]:
    [event] = await events_of(stack, t["tenant_id"], order_id, "purchase.fraud_warning")
    assert_event_shape(event, SEED_FRAUD_WARNING)
    return dict(event["data"])


async def test_with_the_setting_off_a_warning_recommends_a_refund_and_refunds_nothing(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    got = await api.get(f"/admin/tenants/{t['tenant_id']}", admin=True)
    assert got.status == 200 and got.body["auto_refund_fraud_warnings"] is False, got  # off by default
    player, bought = await paid(api, t, EFW_CARD)
    o = await warned(api, t, bought["order_id"])
    [w] = o["fraud_warnings"]
    assert (w["fraud_type"], w["actionable"], w["recommendation"], w["refund_id"]) == (
        "made_with_stolen_card",
        True,
        "consider_refund",
        None,
    )
    assert w["warning_id"].startswith("issfr_")
    assert o["status"] == "completed" and o["refunds"] == [] and o["usd_refundable"] == "10.00"
    assert await balance(api, t, player) == "100"
    assert await processor_refunds(stack, o["payment_intent_id"]) == []
    assert await warning_event(stack, t, bought["order_id"]) == {
        "order_id": bought["order_id"],
        "transaction_id": bought["transaction_id"],
        "payment_intent_id": o["payment_intent_id"],
        "charge_id": await charge_of(api, stack, o["payment_intent_id"]),
        "fraud_type": "made_with_stolen_card",
        "actionable": True,
        "usd_amount": "10.00",
        "recommendation": "consider_refund",
        "warning_id": w["warning_id"],
        "auto_refund": False,
        "refund_id": None,
    }
    await check_ledger(api)


async def test_a_warned_order_names_its_charge(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    _, bought = await paid(api, t, EFW_CARD)
    o = await warned(api, t, bought["order_id"])
    charge = await charge_of(api, stack, o["payment_intent_id"])
    assert (await warning_event(stack, t, bought["order_id"]))["charge_id"] == charge
    assert o["charge_id"] == charge, o


async def test_with_the_setting_on_a_warning_refunds_everything_at_once(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    await auto_refund(api, t["tenant_id"], True)
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    efw = await sim(api, stack, "efw", {"payment_intent": pi})
    o = await wait_status(api, t, oid, "refunded")
    [r] = o["refunds"]
    assert (r["status"], r["source"], r["reason"], r["usd_amount"], r["currency_debited"], r["new_balance"]) == (
        "succeeded",
        "fraud_warning",
        "fraudulent",
        "10.00",
        "100",
        "0",
    )
    [w] = o["fraud_warnings"]
    assert (w["warning_id"], w["recommendation"], w["refund_id"]) == (efw["id"], "consider_refund", r["refund_id"])
    assert o["history"][-1]["source"] == "fraud_warning"
    assert await balance(api, t, player) == "0"
    made = await processor_refunds(stack, pi)
    assert [(m["id"], m["amount"], m["reason"]) for m in made] == [(r["processor_refund_id"], 1000, "fraudulent")]

    data = await warning_event(stack, t, oid)
    assert (data["auto_refund"], data["refund_id"], data["recommendation"]) == (True, r["refund_id"], "consider_refund")
    [refunded] = await events_of(stack, t["tenant_id"], oid, "purchase.refunded")
    assert_event_shape(refunded, SEED_REFUNDED)
    assert (refunded["data"]["source"], refunded["data"]["reason"], refunded["data"]["refund_id"]) == (
        "fraud_warning",
        "fraudulent",
        r["refund_id"],
    )
    assert (refunded["data"]["fully_refunded"], refunded["data"]["order_status"]) == (True, "refunded")
    # The warning is announced before the refund it caused.
    kinds = await order_event_types(stack, t["tenant_id"], oid, "purchase.refunded")
    assert kinds == ["purchase.completed", "purchase.fraud_warning", "purchase.refunded"]
    await check_ledger(api)


async def test_an_automatic_refund_takes_what_a_partial_refund_left(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    await auto_refund(api, t["tenant_id"], True)
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    assert (await refund(api, oid, "4.00")).status == 201
    pi = (await order(api, t, oid))["payment_intent_id"]
    await sim(api, stack, "efw", {"payment_intent": pi})
    o = await wait_status(api, t, oid, "refunded")
    assert [(r["source"], r["usd_amount"], r["currency_debited"]) for r in o["refunds"]] == [
        ("admin", "4.00", "40"),
        ("fraud_warning", "6.00", "60"),
    ]
    assert o["fraud_warnings"][0]["recommendation"] == "consider_refund"
    assert [m["amount"] for m in await processor_refunds(stack, pi)] == [400, 600]
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_a_warning_that_is_not_actionable_is_monitored(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    await auto_refund(api, t["tenant_id"], True)
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    await sim(api, stack, "efw", {"payment_intent": pi, "actionable": False, "fraud_type": "misc"})
    o = await warned(api, t, oid)
    [w] = o["fraud_warnings"]
    assert (w["fraud_type"], w["actionable"], w["recommendation"], w["refund_id"]) == ("misc", False, "monitor", None)
    assert o["status"] == "completed" and o["refunds"] == []
    data = await warning_event(stack, t, oid)
    assert (data["actionable"], data["recommendation"], data["auto_refund"], data["refund_id"]) == (
        False,
        "monitor",
        False,
        None,
    )
    assert await balance(api, t, player) == "100"
    assert await processor_refunds(stack, pi) == []
    await check_ledger(api)


async def test_a_warning_on_a_refunded_order_is_monitored(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    await auto_refund(api, t["tenant_id"], True)
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    assert (await refund(api, oid)).status == 201
    pi = (await order(api, t, oid))["payment_intent_id"]
    await sim(api, stack, "efw", {"payment_intent": pi})
    o = await warned(api, t, oid)
    assert (o["fraud_warnings"][0]["recommendation"], o["fraud_warnings"][0]["refund_id"]) == ("monitor", None)
    assert o["status"] == "refunded" and len(o["refunds"]) == 1
    data = await warning_event(stack, t, oid)
    assert (data["recommendation"], data["auto_refund"]) == ("monitor", False)
    assert len(await processor_refunds(stack, pi)) == 1
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def _deliveries(api: Api, stack: Stack, event_type: str) -> dict[str, int]:
    """How many times the simulator delivered (2xx) each event of `event_type`, by event id."""
    out: dict[str, int] = {}
    for w in (await sim(api, stack, "state"))["sent_webhooks"]:
        if w["type"] == event_type and 200 <= w["status"] < 300:
            out[w["id"]] = out.get(w["id"], 0) + 1
    return out


async def test_a_warning_delivered_twice_is_recorded_and_refunded_once(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    await auto_refund(api, t["tenant_id"], True)
    player, bought = await paid(api, t)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    kind = "radar.early_fraud_warning.created"
    seen = await _deliveries(api, stack, kind)
    async with sim_faults(api, stack, webhook_duplicate=True):
        await sim(api, stack, "efw", {"payment_intent": pi})

        async def twice() -> bool:
            return [n for e, n in (await _deliveries(api, stack, kind)).items() if e not in seen] == [2]

        await eventually(twice, timeout_s=15)
    o = await wait_status(api, t, oid, "refunded")
    assert len(o["fraud_warnings"]) == 1 and len(o["refunds"]) == 1
    assert o["fraud_warnings"][0]["refund_id"] == o["refunds"][0]["refund_id"]
    assert len(await processor_refunds(stack, pi)) == 1
    assert await balance(api, t, player) == "0"
    await warning_event(stack, t, oid)  # exactly one
    assert len(await events_of(stack, t["tenant_id"], oid, "purchase.refunded")) == 1
    await check_ledger(api)
