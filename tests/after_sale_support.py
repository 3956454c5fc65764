"""What the after-sale tests (refunds, disputes, early fraud warnings) share: a paid order, an admin
refund, waiting on an order's state, purchase.* events of one order, the processor's own refunds
of a PaymentIntent, operators of a role, and the seed's example payloads to check events against.

Everything goes through the public gateway and the running simulator; nothing is mocked."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import asyncpg
import stripe

from devstack.stack import Stack
from services.common.config import Settings
from tests.helpers import Api, Response, eventually
from tests.payments_support import VISA, Events, balance, buy, check_ledger, email, order, sim

ITEM = "/api/item-purchases/purchase-item"
BALANCE = "/api/players/balance"

# -- the seed's example payloads (../shared/seeds/004_6352101342b11b09.txt, "Outbound webhook
# events"): every event must carry each field with the same JSON type; more fields are allowed.

SEED_REFUNDED: dict[str, Any] = {
    "order_id": "ORD_...",
    "transaction_id": "txn_...",
    "payment_intent_id": "pi_...",
    "charge_id": "ch_...",
    "usd_refunded": "10.00",
    "usd_original": "10.00",
    "fully_refunded": True,
    "currency_debited": "100",
    "new_balance": "0",
    "currency_name": "Gold Coins",
    "order_status": "refunded",
}
SEED_DISPUTED_OPENED: dict[str, Any] = {
    "order_id": "ORD_...",
    "transaction_id": "txn_...",
    "payment_intent_id": "pi_...",
    "charge_id": "ch_...",
    "dispute_id": "dp_...",
    "reason": "fraudulent",
    "usd_amount": "10.00",
}
SEED_DISPUTED_CLOSED: dict[str, Any] = {
    "order_id": "ORD_...",
    "dispute_id": "dp_...",
    "dispute_status": "lost",
    "currency_debited": "100",
    "new_balance": "0",
}
SEED_FRAUD_WARNING: dict[str, Any] = {
    "order_id": "ORD_...",
    "transaction_id": "txn_...",
    "payment_intent_id": "pi_...",
    "charge_id": "ch_...",
    "fraud_type": "made_with_stolen_card",
    "actionable": True,
    "usd_amount": "10.00",
    "recommendation": "consider_refund",
}
# The seed's envelope around `data`.
SEED_ENVELOPE: dict[str, Any] = {"event_id": "evt_01HX...", "event_type": "purchase.refunded", "tenant_id": "g"}


def assert_seed_shape(payload: dict[str, Any], example: dict[str, Any]) -> None:
    """`payload` has every field of the seed's `example`, each of the same JSON type (a bool is
    not an int, a string amount never a number)."""
    missing = sorted(set(example) - set(payload))
    assert not missing, f"fields of the seed's example missing: {missing} in {payload}"
    for name, value in example.items():
        assert type(payload[name]) is type(value), (name, payload[name], type(value).__name__)


def assert_event_shape(event: dict[str, Any], example: dict[str, Any]) -> None:
    """An event's envelope and its data as the seed has them."""
    assert_seed_shape(event, SEED_ENVELOPE)
    assert isinstance(event["data"], dict), event
    assert_seed_shape(event["data"], example)


# -- orders ---------------------------------------------------------------------------------------


def key() -> str:
    return f"rk-{secrets.token_hex(8)}"


async def paid(
    api: Api, t: dict[str, Any], card: str = VISA, usd: str = "10.00", player: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A completed currency purchase: (player, the purchase's answer)."""
    player = player or email()
    resp = await buy(api, t, player, payment_method_id=card, usd_amount=usd)
    assert resp.status == 200 and resp.body["status"] == "success", resp
    return player, dict(resp.body)


async def refund(
    api: Api,
    order_id: str,
    usd: str | None = None,
    *,
    idempotency_key: str | None = None,
    reason: str | None = None,
    credential: str | None = None,
) -> Response:
    """POST /admin/orders/{id}/refunds, as the bootstrap token or an operator's `credential`;
    a fresh idempotency key unless one is given."""
    body: dict[str, Any] = {"idempotency_key": idempotency_key or key()}
    if usd is not None:
        body["usd_amount"] = usd
    if reason is not None:
        body["reason"] = reason
    path = f"/admin/orders/{order_id}/refunds"
    if credential is not None:
        return await api.post(path, json=body, headers={"Authorization": f"Bearer {credential}"})
    return await api.post(path, admin=True, json=body)


async def admin_order(api: Api, order_id: str) -> dict[str, Any]:
    resp = await api.get(f"/admin/orders/{order_id}", admin=True)
    assert resp.status == 200, resp
    return dict(resp.body)


async def wait_order(
    api: Api, t: dict[str, Any], order_id: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 15
) -> dict[str, Any]:
    """The partner's view of the order once `check` holds of it."""

    async def ready() -> dict[str, Any]:
        o = await order(api, t, order_id)
        return o if check(o) else {}

    return await eventually(ready, timeout_s=timeout_s)


async def wait_status(api: Api, t: dict[str, Any], order_id: str, status: str, timeout_s: float = 15) -> dict[str, Any]:
    return await wait_order(api, t, order_id, lambda o: o["status"] == status, timeout_s)


async def wait_refunds(api: Api, t: dict[str, Any], order_id: str, count: int, timeout_s: float = 15) -> dict[str, Any]:
    """The order once it lists `count` succeeded refunds and none pending."""

    def done(o: dict[str, Any]) -> bool:
        states = [r["status"] for r in o["refunds"]]
        return states.count("succeeded") >= count and "pending" not in states

    return await wait_order(api, t, order_id, done, timeout_s)


def debits(o: dict[str, Any]) -> list[str]:
    """The currency debited by each of the order's succeeded refunds."""
    return [r["currency_debited"] for r in o["refunds"] if r["status"] == "succeeded"]


def units(amount: str) -> int:
    """A units string ("33.30", "-100") in minor units, to add amounts exactly."""
    whole, _, frac = amount.lstrip("-").partition(".")
    minor = int(whole) * 100 + int((frac + "00")[:2])
    return -minor if amount.startswith("-") else minor


# -- players --------------------------------------------------------------------------------------


async def balance_body(api: Api, t: dict[str, Any], player: str) -> dict[str, Any]:
    resp = await api.get(f"{BALANCE}?player_email={player}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return dict(resp.body)


async def spend(api: Api, t: dict[str, Any], player: str, price: str, idempotency_key: str | None = None) -> Response:
    """An item purchase of `price` units."""
    return await api.post(
        ITEM,
        key=t["sdk_key"],
        json={
            "player_email": player,
            "item_id": "sword",
            "item_name": "Sword",
            "price": price,
            "idempotency_key": idempotency_key or key(),
        },
    )


# -- events ---------------------------------------------------------------------------------------


async def events_of(
    stack: Stack, tenant_id: str, order_id: str, event_type: str, count: int = 1, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """The order's `event_type` events on JetStream once there are at least `count` (by event id,
    so a redelivery is not counted twice), in the stream's order."""
    ev = Events(stack, tenant_id)

    async def enough() -> list[dict[str, Any]]:
        await ev.collect_until(order_id, event_type)
        found = ev.of(order_id, event_type)
        return found if len(found) >= count else []

    return await eventually(enough, timeout_s=timeout_s, interval_s=0.2)


async def all_events(stack: Stack, tenant_id: str, order_id: str, until: str) -> dict[str, list[dict[str, Any]]]:
    """Every purchase.* event of the order by type, read once `until` has arrived. Events of one
    order are published in the order they were written, so whatever came before `until` is here."""
    ev = Events(stack, tenant_id)
    await ev.collect_until(order_id, until)
    out: dict[str, list[dict[str, Any]]] = {}
    for e in ev.seen.values():
        if e["data"].get("order_id") == order_id:
            out.setdefault(e["event_type"], []).append(e)
    return out


async def order_event_types(stack: Stack, tenant_id: str, order_id: str, until: str) -> list[str]:
    """The types of the order's purchase.* events in the stream's order, read once `until` came."""
    ev = Events(stack, tenant_id)
    await ev.collect_until(order_id, until)
    return [e["event_type"] for e in ev.seen.values() if e["data"].get("order_id") == order_id]


# -- the processor --------------------------------------------------------------------------------


async def processor_refunds(stack: Stack, payment_intent_id: str) -> list[dict[str, Any]]:
    """The refunds the simulator has made of a PaymentIntent, read with the stripe SDK as the
    payments service reads them, oldest first."""
    http = stripe.AIOHTTPClient()
    try:
        client = stripe.StripeClient(
            stack.env["INVO_PROCESSOR_SECRET_KEY"],
            base_addresses={"api": stack.env["INVO_PROCESSOR_API_BASE"]},
            http_client=http,
            max_network_retries=0,
        )
        page = await client.v1.refunds.list_async({"payment_intent": payment_intent_id, "limit": 100})
        return [r.to_dict() for r in reversed(page.data)]  # Stripe lists newest first
    finally:
        await http.close_async()


async def inbox_of(stack: Stack, payment_intent_id: str) -> list[dict[str, Any]]:
    """The payments service's stored processor events about a PaymentIntent (its own and its
    charge's, refunds', disputes' and warnings'), as received: event_id, type, waiting_on (kept
    once applied: what it had to wait for), handled (bool) and note. Read-only."""
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        rows = await conn.fetch(
            f"SELECT event_id, type, waiting_on, handled_at IS NOT NULL AS handled, note"
            f" FROM {Settings.from_env(stack.env).schema('payments')}.processor_inbox"
            f" WHERE payload->'data'->'object'->>'payment_intent' = $1 OR payload->'data'->'object'->>'id' = $1"
            f" ORDER BY received_at, event_id",
            payment_intent_id,
        )
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def deliveries(api: Api, stack: Stack, event_type: str) -> dict[str, int]:
    """How many times the simulator has delivered (2xx) each processor event of `event_type`,
    by event id (webhook_duplicate makes it 2)."""
    out: dict[str, int] = {}
    for w in (await sim(api, stack, "state"))["sent_webhooks"]:
        if w["type"] == event_type and 200 <= w["status"] < 300:
            out[w["id"]] = out.get(w["id"], 0) + 1
    return out


async def sim_refund(api: Api, stack: Stack, payment_intent_id: str, amount: int | None = None) -> tuple[int, Any]:
    """A dashboard refund (cents; all that remains unless `amount`) that may be refused: (status,
    the simulator's answer, a refund or Stripe's error)."""
    assert api.session is not None
    body: dict[str, Any] = {"payment_intent": payment_intent_id}
    if amount is not None:
        body["amount"] = amount
    async with api.session.post(f"{stack.env['INVO_PROCESSOR_API_BASE']}/_sim/refund", json=body) as resp:
        return resp.status, await resp.json()


# -- operators and tenants ------------------------------------------------------------------------


async def operator(api: Api, role: str) -> dict[str, Any]:
    """A new operator of `role` (viewer, support, finance, admin); its bearer is `credential`."""
    body = {"name": f"{role.title()} Person", "email": f"{role}-{secrets.token_hex(4)}@invo.test", "role": role}
    resp = await api.post("/admin/operators", admin=True, json=body)
    assert resp.status == 201, resp
    return dict(resp.body)


async def auto_refund(api: Api, tenant_id: str, on: bool) -> None:
    """The tenant's auto_refund_fraud_warnings setting."""
    resp = await api.patch(f"/admin/tenants/{tenant_id}", admin=True, json={"auto_refund_fraud_warnings": on})
    assert resp.status == 200, resp
    assert resp.body["auto_refund_fraud_warnings"] is on, resp


__all__ = [
    "BALANCE",
    "ITEM",
    "SEED_DISPUTED_CLOSED",
    "SEED_DISPUTED_OPENED",
    "SEED_FRAUD_WARNING",
    "SEED_REFUNDED",
    "admin_order",
    "all_events",
    "assert_event_shape",
    "assert_seed_shape",
    "auto_refund",
    "balance",
    "balance_body",
    "check_ledger",
    "debits",
    "deliveries",
    "events_of",
    "inbox_of",
    "key",
    "operator",
    "order_event_types",
    "paid",
    "processor_refunds",
    "refund",
    "sim_refund",
    "spend",
    "units",
    "wait_order",
    "wait_refunds",
    "wait_status",
]
