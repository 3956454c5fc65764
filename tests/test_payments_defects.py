"""Currency purchases: the defects found from outside (issue 10, item 7), each with the test that
failed before its fix, and the processor-event inbox.

- an abandoned 3-D Secure challenge is cancelled after INVO_REQUIRES_ACTION_TIMEOUT_S and releases
  the cap it reserved;
- a purchase refused as a 400 without an order_id leaves no order and sends no event;
- a succeeded PaymentIntent whose amount or currency is not the order's is never credited;
- the payments service applies its own metadata limit;
- a processor event larger than the app's body limit (but within its own) is accepted;
- processor events are stored raw before they are handled; a type with no handler waits.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import asyncpg
import pytest
from invo.v1 import payments_pb2, payments_pb2_grpc

from devstack.stack import Stack
from services.common import errors, grpcutil
from services.payments.inbox import Dispatcher
from services.payments.registry import Handled, Registry
from tests.helpers import Api, assert_envelope, eventually
from tests.payments_support import (
    CONFIRM,
    THREE_DS,
    VISA,
    Events,
    balance,
    buy,
    check_ledger,
    email,
    order,
    order_reaches,
    payments_db,
    processor_event,
    ref,
    send_processor_event,
    sim,
    sim_faults,
    stripe_signature,
    transitions,
)

__all__ = ["payments_db"]  # the fixture, imported for this module's tests


def events_of_type(events: Events, event_type: str) -> list[dict[str, Any]]:
    return [e for e in events.seen.values() if e["event_type"] == event_type]


async def signed(api: Api, stack: Stack, payload: str) -> Any:
    return await send_processor_event(
        api, payload, stripe_signature(payload, stack.env["INVO_PROCESSOR_WEBHOOK_SECRET"])
    )


# -- an abandoned challenge releases the cap ----------------------------------------------------


async def test_an_abandoned_challenge_is_cancelled_and_releases_the_cap(
    api: Api, stack: Stack, payments_db: asyncpg.Pool
) -> None:
    t = await api.create_tenant(spending_caps={"hourly_usd": "15.00"})
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200 and start.body["status"] == "requires_action", start
    order_id, pi = start.body["order_id"], start.body["payment_intent_id"]
    # While the challenge is pending it reserves its $10 (documented): another $10 is over $15.
    assert_envelope(await buy(api, t, player), 429, "SPENDING_LIMIT_EXCEEDED")
    # Webhooks held: the recovery loop's own answer from the processor settles the order.
    async with sim_faults(api, stack, webhook_hold=True):
        # The player walked away an hour and a minute ago (INVO_REQUIRES_ACTION_TIMEOUT_S is 3600).
        await payments_db.execute(
            "UPDATE orders SET updated_at = now() - interval '61 minutes' WHERE order_id = $1", order_id
        )
        o = await order_reaches(api, t, order_id, "cancelled")
        released = await sim(api, stack, "release_webhooks")
        assert released["released"] == 1  # payment_intent.canceled, late: it changes nothing
    assert transitions(o) == [
        (None, "pending_payment"),
        ("pending_payment", "requires_action"),
        ("requires_action", "cancelled"),
    ]
    assert o["history"][-1]["source"] == "recovery"
    assert o["failure_code"] == "payment_canceled"
    intents = [i for i in (await sim(api, stack, "state"))["intents"] if i["id"] == pi]
    assert [(i["status"], i["cancellation_reason"]) for i in intents] == [("canceled", "abandoned")]
    # The cap is released: the same $10 goes through now.
    ok = await buy(api, t, player)
    assert ok.status == 200 and ok.body["new_balance"] == "100", ok
    late = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
    assert_envelope(late, 402, "PAYMENT_CANCELED")
    events = Events(stack, t["tenant_id"])
    await events.collect_until(ok.body["order_id"], "purchase.completed")
    failed = events.of(order_id, "purchase.failed")
    assert len(failed) == 1, failed
    assert failed[0]["data"]["failure_code"] == "payment_canceled"
    assert failed[0]["data"]["payment_intent_id"] == pi
    assert (await order(api, t, order_id))["status"] == "cancelled"
    assert await balance(api, t, player) == "100"
    await check_ledger(api)


async def test_a_challenge_younger_than_the_limit_is_left_alone(
    api: Api, stack: Stack, payments_db: asyncpg.Pool
) -> None:
    t = await api.create_tenant()
    start = await buy(api, t, email(), payment_method_id=THREE_DS)
    assert start.status == 200, start
    order_id = start.body["order_id"]
    await payments_db.execute(
        "UPDATE orders SET updated_at = now() - interval '59 minutes' WHERE order_id = $1", order_id
    )
    # A later order of the same age as ours, made abandoned, is the sentinel: once the loop has
    # cancelled it, it has looked at ours too.
    other = await buy(api, t, email(), payment_method_id=THREE_DS)
    assert other.status == 200, other
    await payments_db.execute(
        "UPDATE orders SET updated_at = now() - interval '2 hours' WHERE order_id = $1", other.body["order_id"]
    )
    await order_reaches(api, t, other.body["order_id"], "cancelled")
    assert (await order(api, t, order_id))["status"] == "requires_action"


# -- a 400 without an order_id leaves no order and sends no event ---------------------------------


async def test_a_payment_method_the_processor_refuses_leaves_no_order_and_no_event(
    api: Api, stack: Stack, payments_db: asyncpg.Pool
) -> None:
    t = await api.create_tenant()
    player, reference = email(), ref()
    refused = await buy(api, t, player, reference, payment_method_id="pm_card_unknownToTheProcessor")
    assert_envelope(refused, 400, "INVALID_PAYMENT_METHOD")
    assert refused.body["param"] == "payment_method_id"
    assert "order_id" not in refused.body
    # Bad input changed nothing the partner can see: the corrected request under the same
    # reference is a new purchase, not IDEMPOTENCY_KEY_REUSED.
    ok = await buy(api, t, player, reference)
    assert ok.status == 200 and ok.body["duplicate"] is False and ok.body["new_balance"] == "100", ok
    events = Events(stack, t["tenant_id"])
    await events.collect_until(ok.body["order_id"], "purchase.completed")
    assert events_of_type(events, "purchase.failed") == []
    # We keep the refused attempt, with its history, but as voided.
    rows = await payments_db.fetch(
        "SELECT order_id, status, voided_at IS NOT NULL AS voided FROM orders WHERE tenant_id = $1 ORDER BY created_at",
        t["tenant_id"],
    )
    assert [(r["status"], r["voided"]) for r in rows] == [("failed", True), ("completed", False)]
    assert_envelope(
        await api.get(f"/api/currency-purchases/order-details?order_id={rows[0]['order_id']}", key=t["sdk_key"]),
        404,
        "ORDER_NOT_FOUND",
    )
    await check_ledger(api)


# -- a charge that does not match its order is never credited -------------------------------------


async def test_a_charge_for_another_amount_is_never_credited(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player, reference = email(), ref()
    sent_before = len((await sim(api, stack, "state"))["sent_webhooks"])
    # The processor charges a cent more than asked; its own webhook says the same.
    async with sim_faults(api, stack, amount_delta_next=1, amount_delta=1):
        resp = await buy(api, t, player, reference)
    assert_envelope(resp, 409, "PAYMENT_UNDER_REVIEW")
    order_id = resp.body["order_id"]

    async def webhook_answered() -> bool:
        sent = (await sim(api, stack, "state"))["sent_webhooks"][sent_before:]
        return any(w["type"] == "payment_intent.succeeded" and w["status"] == 200 for w in sent)

    await eventually(webhook_answered)
    o = await order(api, t, order_id)
    assert o["status"] == "pending_payment" and o["transaction_id"] is None, o
    assert transitions(o) == [(None, "pending_payment")]
    replay = await buy(api, t, player, reference)
    assert_envelope(replay, 409, "PAYMENT_UNDER_REVIEW")
    assert replay.body["order_id"] == order_id
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


async def test_a_challenge_confirmed_for_another_amount_is_never_credited(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    async with sim_faults(api, stack, amount_delta_next=1, amount_delta=-100, webhook_hold=True):
        start = await buy(api, t, player, payment_method_id=THREE_DS)
        assert start.status == 200 and start.body["status"] == "requires_action", start
        pi, order_id = start.body["payment_intent_id"], start.body["order_id"]
        await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
        confirmed = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
        assert_envelope(confirmed, 409, "PAYMENT_UNDER_REVIEW")
        assert await sim(api, stack, "release_webhooks") == {"released": 1}
    again = await api.post(CONFIRM, key=t["sdk_key"], json={"payment_intent_id": pi, "order_id": order_id})
    assert_envelope(again, 409, "PAYMENT_UNDER_REVIEW")
    assert (await order(api, t, order_id))["status"] == "requires_action"
    assert await balance(api, t, player) == "0"
    await check_ledger(api)


@pytest.mark.parametrize(
    "change",
    [{"amount": 100, "amount_received": 100}, {"currency": "eur"}, {"amount_received": 1}],
    ids=["amount", "currency", "amount_received"],
)
async def test_a_webhook_for_another_amount_or_currency_is_never_credited(
    api: Api, stack: Stack, payments_db: asyncpg.Pool, change: dict[str, Any]
) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    order_id, pi = start.body["order_id"], start.body["payment_intent_id"]
    obj = {
        "id": pi,
        "object": "payment_intent",
        "amount": 1000,
        "amount_received": 1000,
        "currency": "usd",
        "status": "succeeded",
        "metadata": {"order_id": order_id, "tenant_id": t["tenant_id"]},
        **change,
    }
    payload = processor_event("payment_intent.succeeded", obj)
    resp = await signed(api, stack, payload)
    assert resp.status == 200 and resp.body["ignored"] is True, resp
    o = await order(api, t, order_id)
    assert o["status"] == "requires_action" and o["transaction_id"] is None
    assert await balance(api, t, player) == "0"
    note = await payments_db.fetchval(
        "SELECT note FROM processor_inbox WHERE event_id = $1 AND handled_at IS NOT NULL", json.loads(payload)["id"]
    )
    assert note.startswith("held for review"), note
    await check_ledger(api)


# -- the payments service's own limits -----------------------------------------------------------


@pytest.mark.parametrize(
    "metadata_json",
    [json.dumps({"blob": "x" * 9000}), "[1, 2]", "not json"],
    ids=["over_8_kb", "not_an_object", "not_json"],
)
async def test_the_payments_service_applies_its_metadata_limit(api: Api, stack: Stack, metadata_json: str) -> None:
    """Behind the gateway too: the next issue's checkout page calls the service as well."""
    t = await api.create_tenant()
    player = email()
    ch = grpcutil.channel(stack.env["INVO_PAYMENTS_ADDR"])
    try:
        stub = payments_pb2_grpc.PaymentsServiceStub(ch)
        request = payments_pb2.PurchaseCurrencyRequest(
            tenant=payments_pb2.TenantContext(tenant_id=t["tenant_id"], environment="sandbox", currency_name="Coins"),
            player_email=player,
            usd_cents=1000,
            payment_method_id=VISA,
            purchase_reference=ref(),
            metadata_json=metadata_json,
        )
        with pytest.raises(errors.InvalidRequest) as refused:
            await grpcutil.call(stub.PurchaseCurrency, request, timeout_s=10)
    finally:
        await ch.close()
    assert refused.value.error_code == "INVALID_PARAMETER"
    assert refused.value.extra == {"param": "metadata"}
    assert await balance(api, t, player) == "0"


async def test_a_processor_event_is_bound_by_its_own_limit_not_the_apps(api: Api, stack: Stack) -> None:
    event_type = f"invo_test.{secrets.token_hex(4)}.padded"
    within = processor_event(event_type, {"id": "obj_1", "padding": "x" * 100_000})
    accepted = await signed(api, stack, within)
    assert accepted.status == 200, accepted
    assert accepted.body == {"received": True, "duplicate": False, "ignored": True}
    over = processor_event(event_type, {"id": "obj_2", "padding": "x" * 600_000})
    assert_envelope(await signed(api, stack, over), 413, "PAYLOAD_TOO_LARGE")
    # A partner request keeps the app's smaller limit.
    t = await api.create_tenant()
    big = await api.post(
        "/api/currency-purchases/purchase-currency",
        key=t["sdk_key"],
        json={
            "player_email": email(),
            "usd_amount": "10.00",
            "payment_method_id": VISA,
            "purchase_reference": "x" * 100_000,
        },
    )
    assert_envelope(big, 413, "PAYLOAD_TOO_LARGE")


# -- the processor-event inbox -------------------------------------------------------------------


async def test_an_event_without_a_handler_waits_in_the_inbox_until_one_is_registered(
    api: Api, stack: Stack, payments_db: asyncpg.Pool
) -> None:
    # A type of its own, so no other test's events are in the way (think charge.refunded).
    event_type = f"invo_test.{secrets.token_hex(4)}.refunded"
    payloads = [processor_event(event_type, {"id": f"re_{i}", "object": "refund", "amount": 100 * i}) for i in (1, 2)]
    ids = [json.loads(p)["id"] for p in payloads]
    for payload in payloads:
        first = await signed(api, stack, payload)
        assert first.status == 200 and first.body == {"received": True, "duplicate": False, "ignored": True}, first
    # Stored raw, not marked as seen; a replayed id is a duplicate (and is still waiting).
    again = await signed(api, stack, payloads[0])
    assert again.status == 200 and again.body["duplicate"] is True, again
    rows = await payments_db.fetch(
        "SELECT event_id, type, payload, handled_at FROM processor_inbox WHERE type = $1 ORDER BY received_at",
        event_type,
    )
    assert [(r["event_id"], r["handled_at"]) for r in rows] == [(ids[0], None), (ids[1], None)]
    assert [json.loads(r["payload"]) for r in rows] == [json.loads(p) for p in payloads]

    # The next issue's handler arrives (here, in the test's own process): it gets what already
    # came, oldest first, once. A handler that fails leaves its event waiting, with why.
    seen: list[tuple[str, int]] = []
    failures = [RuntimeError("the ledger is away")]

    async def refunded(event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        if event_id == ids[1] and failures:
            raise failures.pop()
        seen.append((event_id, payload["data"]["object"]["amount"]))
        return Handled("applied")

    registry = Registry()
    registry.register(event_type, refunded)
    dispatcher = Dispatcher(payments_db, registry)
    assert await dispatcher.apply_pending() == 1
    assert seen == [(ids[0], 100)]
    waiting = await payments_db.fetchrow(
        "SELECT handled_at, attempts, last_error FROM processor_inbox WHERE event_id = $1", ids[1]
    )
    assert (waiting["handled_at"], waiting["attempts"]) == (None, 1)
    assert "the ledger is away" in waiting["last_error"]
    assert await dispatcher.apply_pending({event_type}) == 1
    assert await dispatcher.apply_pending({event_type}) == 0
    assert seen == [(ids[0], 100), (ids[1], 200)]
    handled = await payments_db.fetch(
        "SELECT note FROM processor_inbox WHERE type = $1 AND handled_at IS NOT NULL", event_type
    )
    assert [r["note"] for r in handled] == ["applied", "applied"]
    # Once handled, a replay is a duplicate and nothing is applied again.
    replay = await signed(api, stack, payloads[1])
    assert replay.status == 200 and replay.body["duplicate"] is True, replay
    assert len(seen) == 2


async def test_a_payment_intent_event_is_stored_then_marked_handled(
    api: Api, stack: Stack, payments_db: asyncpg.Pool
) -> None:
    t = await api.create_tenant()
    player = email()
    start = await buy(api, t, player, payment_method_id=THREE_DS)
    assert start.status == 200, start
    pi, order_id = start.body["payment_intent_id"], start.body["order_id"]
    await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
    o = await order_reaches(api, t, order_id, "completed")
    assert o["history"][-1]["source"] == "webhook"
    row = await payments_db.fetchrow(
        "SELECT event_id, payload, received_at, handled_at, note FROM processor_inbox"
        " WHERE type = 'payment_intent.succeeded' AND payload->'data'->'object'->>'id' = $1",
        pi,
    )
    assert row is not None and row["note"] == "applied"
    assert row["received_at"] <= row["handled_at"]
    assert json.loads(row["payload"])["data"]["object"]["metadata"]["order_id"] == order_id
    assert await balance(api, t, player) == "100"
