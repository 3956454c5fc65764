"""The processor's after-sale events in any order, through the public gateway with the real stack:
each delivered twice is applied once; held and released newest first, a dispute's closing before
its opening and a dispute before the payment's own success are applied after what they follow;
and events that an earlier version stored without applying are applied by the recovery loop."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import asyncpg

from devstack.stack import Stack
from services.common.config import Settings
from tests.after_sale_support import (
    SEED_DISPUTED_CLOSED,
    SEED_DISPUTED_OPENED,
    assert_event_shape,
    balance_body,
    deliveries,
    events_of,
    inbox_of,
    paid,
    wait_order,
    wait_refunds,
    wait_status,
)
from tests.helpers import Api, eventually
from tests.payments_support import THREE_DS, VISA, buy, check_ledger, email, order, sim, sim_faults
from tests.stream_support import Seen, read_events

AFTER_SALE_TYPES = (
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
    "radar.early_fraud_warning.created",
)


def wallet(b: dict[str, Any]) -> tuple[str, str, str]:
    return b["balance"], b["available_balance"], b["pending"]


def kind(e: dict[str, Any]) -> str:
    """An event's type, with its dispute_status for purchase.disputed ("purchase.disputed:won")."""
    status = e["data"].get("dispute_status")
    return f"{e['event_type']}:{status}" if status else str(e["event_type"])


async def stream_of(stack: Stack, tenant_id: str, order_id: str, until: str) -> list[tuple[int, dict[str, Any]]]:
    """The order's purchase.* events on JetStream as (stream sequence, event), once `until` (an
    event type, or "type:dispute_status") is among them, in stream order."""

    def mine(found: Seen) -> dict[int, dict[str, Any]]:
        return {seq: e for seq, e in found.items() if e["data"].get("order_id") == order_id}

    found = await read_events(
        stack, tenant_id, "purchase", lambda f: any(until in (e["event_type"], kind(e)) for e in mine(f).values())
    )
    return sorted(mine(found).items())


def kinds(events: list[tuple[int, dict[str, Any]]]) -> list[str]:
    return [kind(e) for _, e in events]


# -- delivered twice ------------------------------------------------------------------------------


async def test_every_refund_warning_and_dispute_event_delivered_twice_is_applied_once(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    before = {k: await deliveries(api, stack, k) for k in AFTER_SALE_TYPES}
    async with sim_faults(api, stack, webhook_duplicate=True):
        await sim(api, stack, "refund", {"payment_intent": pi, "amount": 200})  # a dashboard refund
        await wait_refunds(api, t, oid, 1)
        await sim(api, stack, "efw", {"payment_intent": pi})
        await wait_order(api, t, oid, lambda o: bool(o["fraud_warnings"]))
        await sim(api, stack, "dispute", {"payment_intent": pi})
        o = await wait_order(api, t, oid, lambda o: bool(o["disputes"]))
        assert o["disputes"][0]["currency_frozen"] == "80", o
        assert wallet(await balance_body(api, t, player)) == ("80", "0", "80")  # one hold, not two
        await sim(api, stack, "dispute", {"payment_intent": pi, "close": "won"})

        async def each_delivered_twice() -> bool:
            for k in AFTER_SALE_TYPES:
                new = [n for e, n in (await deliveries(api, stack, k)).items() if e not in before[k]]
                if new != [2]:
                    return False
            return True

        await eventually(each_delivered_twice, timeout_s=20)
    o = await wait_order(api, t, oid, lambda o: o["disputes"][0]["outcome"] == "won")
    assert [(r["source"], r["usd_amount"], r["currency_debited"]) for r in o["refunds"]] == [
        ("processor", "2.00", "20")
    ]
    assert len(o["fraud_warnings"]) == 1 and len(o["disputes"]) == 1, o
    assert (o["status"], o["usd_refunded"], o["currency_debited"]) == ("completed", "2.00", "20")
    assert wallet(await balance_body(api, t, player)) == ("80", "80", "0")
    found = await events_of(stack, t["tenant_id"], oid, "purchase.disputed", count=2)
    assert [e["data"]["dispute_status"] for e in found] == ["needs_response", "won"], found
    assert (found[0]["data"]["currency_frozen"], found[1]["data"]["currency_released"]) == ("80", "80")
    assert len(await events_of(stack, t["tenant_id"], oid, "purchase.refunded")) == 1
    assert len(await events_of(stack, t["tenant_id"], oid, "purchase.fraud_warning")) == 1
    # Each event stored once and handled.
    inbox = [e for e in await inbox_of(stack, pi) if e["type"] in AFTER_SALE_TYPES]
    assert sorted(e["type"] for e in inbox) == sorted(AFTER_SALE_TYPES), inbox
    assert all(e["handled"] for e in inbox), inbox
    await check_ledger(api)


# -- held, then released newest first -------------------------------------------------------------


async def test_a_dispute_closed_before_its_opening_is_applied_after_it(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    async with sim_faults(api, stack, webhook_hold=True):
        dispute = await sim(api, stack, "dispute", {"payment_intent": pi})
        await sim(api, stack, "dispute", {"payment_intent": pi, "close": "lost"})
        assert (await order(api, t, oid))["disputes"] == []  # nothing has reached us yet
        assert (await sim(api, stack, "release_webhooks", {"order": "reverse"}))["released"] == 2
    o = await wait_status(api, t, oid, "disputed_lost")
    [d] = o["disputes"]
    assert (d["dispute_id"], d["outcome"], d["currency_frozen"], d["currency_debited"]) == (
        dispute["id"],
        "lost",
        "100",
        "100",
    )
    assert wallet(await balance_body(api, t, player)) == ("0", "0", "0")

    # The closing came first and waited on the opening; partners got opened, then closed.
    inbox = {e["type"]: e for e in await inbox_of(stack, pi)}
    closing, opening = inbox["charge.dispute.closed"], inbox["charge.dispute.created"]
    assert closing["waiting_on"] == f"opened:{dispute['id']}" and opening["waiting_on"] is None, inbox
    assert closing["handled"] and opening["handled"], inbox
    assert list(inbox).index("charge.dispute.closed") < list(inbox).index("charge.dispute.created"), inbox
    events = await stream_of(stack, t["tenant_id"], oid, "purchase.disputed:lost")
    assert kinds(events) == ["purchase.completed", "purchase.disputed:needs_response", "purchase.disputed:lost"]
    assert_event_shape(events[1][1], SEED_DISPUTED_OPENED)
    assert_event_shape(events[2][1], SEED_DISPUTED_CLOSED)
    assert (events[2][1]["data"]["currency_debited"], events[2][1]["data"]["new_balance"]) == ("100", "0")
    await check_ledger(api)


async def test_a_dispute_before_the_payments_success_is_applied_after_the_order_completes(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    oid, pi = start.body["order_id"], start.body["payment_intent_id"]
    async with sim_faults(api, stack, webhook_hold=True):
        await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
        dispute = await sim(api, stack, "dispute", {"payment_intent": pi})
        await sim(api, stack, "dispute", {"payment_intent": pi, "close": "won"})
        # Newest first: the closing, the opening, then the payment's success.
        assert (await sim(api, stack, "release_webhooks", {"order": "reverse"}))["released"] >= 3
    o = await wait_order(api, t, oid, lambda o: bool(o["disputes"]) and o["disputes"][0]["outcome"] == "won")
    assert o["status"] == "completed"
    [d] = o["disputes"]
    assert (d["dispute_id"], d["currency_frozen"], d["currency_debited"]) == (dispute["id"], "100", "0")
    assert wallet(await balance_body(api, t, player)) == ("100", "100", "0")

    inbox = {e["type"]: e for e in await inbox_of(stack, pi)}
    assert inbox["charge.dispute.created"]["waiting_on"] == f"paid:{pi}", inbox
    assert inbox["charge.dispute.closed"]["waiting_on"] in (f"paid:{pi}", f"opened:{dispute['id']}"), inbox
    assert all(inbox[k]["handled"] for k in ("payment_intent.succeeded", *AFTER_SALE_TYPES[1:3])), inbox
    assert list(inbox).index("charge.dispute.created") < list(inbox).index("payment_intent.succeeded"), inbox
    events = await stream_of(stack, t["tenant_id"], oid, "purchase.disputed:won")
    assert kinds(events) == ["purchase.completed", "purchase.disputed:needs_response", "purchase.disputed:won"]
    await check_ledger(api)


async def test_a_refund_and_a_dispute_before_the_payments_success_are_applied_after_it(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    oid, pi = start.body["order_id"], start.body["payment_intent_id"]
    async with sim_faults(api, stack, webhook_hold=True):
        await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
        await sim(api, stack, "refund", {"payment_intent": pi, "amount": 300})
        await sim(api, stack, "dispute", {"payment_intent": pi, "amount": 700})  # what the refund left
        assert (await sim(api, stack, "release_webhooks", {"order": "reverse"}))["released"] >= 3
    o = await wait_order(api, t, oid, lambda o: bool(o["disputes"]) and bool(o["refunds"]))
    o = await wait_refunds(api, t, oid, 1)
    assert [(r["source"], r["usd_amount"], r["currency_debited"]) for r in o["refunds"]] == [
        ("processor", "3.00", "30")
    ]
    [d] = o["disputes"]
    assert (d["usd_amount"], d["currency_frozen"]) == ("7.00", "70"), d
    assert wallet(await balance_body(api, t, player)) == ("70", "0", "70")
    await check_ledger(api)


# -- stored by an earlier version, never applied --------------------------------------------------


async def _store_as_an_earlier_version(stack: Stack, event_type: str, obj: dict[str, Any], days_ago: int = 30) -> str:
    """A processor event as a version without its handler left it in the inbox (migration 0003):
    stored raw `days_ago`, unhandled, never tried, waiting on nothing."""
    event_id = f"evt_{secrets.token_hex(12)}"
    payload = {
        "id": event_id,
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        await conn.execute(
            f"INSERT INTO {Settings.from_env(stack.env).schema('payments')}.processor_inbox"
            f" (event_id, type, payload, received_at) VALUES ($1, $2, $3::jsonb, now() - make_interval(days => $4))",
            event_id,
            event_type,
            json.dumps(payload),
            days_ago,
        )
    finally:
        await conn.close()
    return event_id


def _charge(made: dict[str, Any], usd_cents: int) -> dict[str, Any]:
    """The charge as charge.refunded carries it after the refund `made` (the only one)."""
    return {
        "id": made["charge"],
        "object": "charge",
        "amount": usd_cents,
        "amount_refunded": made["amount"],
        "currency": "usd",
        "payment_intent": made["payment_intent"],
        "refunded": made["amount"] == usd_cents,
        "livemode": False,
    }


async def _inbox_row(stack: Stack, pi: str, event_id: str) -> dict[str, Any]:
    [row] = [e for e in await inbox_of(stack, pi) if e["event_id"] == event_id]
    return row


async def _handled(stack: Stack, pi: str, event_id: str) -> dict[str, Any]:
    """The stored event's row once it is handled (the recovery loop runs every ~2 s)."""

    async def done() -> dict[str, Any]:
        row = await _inbox_row(stack, pi, event_id)
        return row if row["handled"] else {}

    return await eventually(done, timeout_s=10)


async def test_a_refund_an_earlier_version_stored_but_did_not_apply_is_applied_by_the_recovery_loop(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    # The processor refunds; its event never reaches this version (dropped by the reset)...
    async with sim_faults(api, stack, webhook_hold=True):
        made = await sim(api, stack, "refund", {"payment_intent": pi, "amount": 400})
    assert (await order(api, t, oid))["refunds"] == []
    # ...but an earlier version stored it and had no handler for it.
    event_id = await _store_as_an_earlier_version(stack, "charge.refunded", _charge(made, 1000))
    o = await wait_refunds(api, t, oid, 1, timeout_s=10)
    [r] = o["refunds"]
    assert (r["source"], r["processor_refund_id"], r["usd_amount"], r["currency_debited"], r["new_balance"]) == (
        "processor",
        made["id"],
        "4.00",
        "40",
        "60",
    )
    assert (o["status"], o["usd_refunded"], o["usd_refundable"]) == ("completed", "4.00", "6.00")
    assert wallet(await balance_body(api, t, player)) == ("60", "60", "0")
    row = await _handled(stack, pi, event_id)
    assert row["note"] == "applied", row
    [refunded] = await events_of(stack, t["tenant_id"], oid, "purchase.refunded")
    assert (refunded["data"]["currency_debited"], refunded["data"]["new_balance"]) == ("40", "60")
    await check_ledger(api)


async def test_a_dispute_an_earlier_version_stored_but_did_not_apply_is_applied_by_the_recovery_loop(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    async with sim_faults(api, stack, webhook_hold=True):
        dispute = await sim(api, stack, "dispute", {"payment_intent": pi})
    assert (await order(api, t, oid))["disputes"] == []
    event_id = await _store_as_an_earlier_version(stack, "charge.dispute.created", dispute)
    o = await wait_order(api, t, oid, lambda o: bool(o["disputes"]), timeout_s=10)
    [d] = o["disputes"]
    assert (d["dispute_id"], d["status"], d["currency_frozen"], d["outcome"]) == (
        dispute["id"],
        "needs_response",
        "100",
        None,
    )
    assert wallet(await balance_body(api, t, player)) == ("100", "0", "100")
    row = await _handled(stack, pi, event_id)
    assert row["note"] == "applied", row
    [opening] = await events_of(stack, t["tenant_id"], oid, "purchase.disputed")
    assert_event_shape(opening, SEED_DISPUTED_OPENED)
    assert (opening["data"]["dispute_id"], opening["data"]["currency_frozen"]) == (dispute["id"], "100")
    # Its closing, sent the ordinary way now, follows it.
    await sim(api, stack, "dispute", {"payment_intent": pi, "close": "won"})
    await wait_order(api, t, oid, lambda o: o["disputes"][0]["outcome"] == "won")
    assert wallet(await balance_body(api, t, player)) == ("100", "100", "0")
    await check_ledger(api)


async def test_a_dispute_and_its_closing_stored_closing_first_by_an_earlier_version_are_applied_in_order(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    player, bought = await paid(api, t, VISA)
    oid = bought["order_id"]
    pi = (await order(api, t, oid))["payment_intent_id"]
    async with sim_faults(api, stack, webhook_hold=True):
        dispute = await sim(api, stack, "dispute", {"payment_intent": pi})
        lost = await sim(api, stack, "dispute", {"payment_intent": pi, "close": "lost"})
    # Stored closing first (the older), as the processor may deliver them.
    closing = await _store_as_an_earlier_version(stack, "charge.dispute.closed", lost, days_ago=31)
    opening = await _store_as_an_earlier_version(stack, "charge.dispute.created", dispute, days_ago=30)
    o = await wait_status(api, t, oid, "disputed_lost", timeout_s=10)
    [d] = o["disputes"]
    assert (d["dispute_id"], d["currency_frozen"], d["currency_debited"]) == (dispute["id"], "100", "100"), d
    assert wallet(await balance_body(api, t, player)) == ("0", "0", "0")
    for event_id in (opening, closing):
        assert (await _handled(stack, pi, event_id))["note"] == "applied"
    assert (await _inbox_row(stack, pi, closing))["waiting_on"] == f"opened:{dispute['id']}"
    events = await stream_of(stack, t["tenant_id"], oid, "purchase.disputed:lost")
    assert kinds(events) == ["purchase.completed", "purchase.disputed:needs_response", "purchase.disputed:lost"]
    await check_ledger(api)
