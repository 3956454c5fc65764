"""What the currency-purchase tests through the public gateway share: the routes and test cards,
purchase and order calls, the processor simulator's controls, signed processor events, and a
reader of purchase.* events on JetStream."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from devstack.stack import Stack
from services.common.config import Settings
from tests.helpers import Api, Response, eventually
from tests.stream_support import Seen, read_events

PURCHASE = "/api/currency-purchases/purchase-currency"
CONFIRM = "/api/currency-purchases/confirm-payment"
DETAILS = "/api/currency-purchases/order-details"
PROCESSOR_WEBHOOK = "/webhooks/processor"

VISA = "pm_card_visa"
DECLINED = "pm_card_chargeDeclined"
INSUFFICIENT = "pm_card_chargeDeclinedInsufficientFunds"
THREE_DS = "pm_card_authenticationRequired"


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
async def payments_db(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    """The payments service's own schema, for what no API shows (the inbox, an order's age, its
    locks): a module that imports this fixture gets it."""
    pool = await asyncpg.create_pool(
        stack.env["INVO_DATABASE_URL"],
        min_size=1,
        max_size=4,
        server_settings={"search_path": Settings.from_env(stack.env).schema("payments")},
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


def email() -> str:
    """A fresh player for each use: per-player velocity limits are never hit by accident. The
    local part holds letters that are not hex digits, so it can never appear in an identity_id."""
    return f"zoe.player-{secrets.token_hex(4)}@example.com"


def ref() -> str:
    return f"ref-{secrets.token_hex(8)}"


def purchase_body(player: str, reference: str | None, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "player_email": player,
        "usd_amount": "10.00",
        "payment_method_id": VISA,
        **kw,
    }
    if reference is not None:
        body["purchase_reference"] = reference
    return body


async def buy(api: Api, t: dict[str, Any], player: str, reference: str | None = None, **kw: Any) -> Response:
    return await api.post(PURCHASE, key=t["sdk_key"], json=purchase_body(player, reference or ref(), **kw))


async def balance(api: Api, t: dict[str, Any], player: str) -> str:
    resp = await api.get(f"/api/players/balance?player_email={player}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return str(resp.body["balance"])


async def details(api: Api, t: dict[str, Any], order_id: str) -> Response:
    return await api.get(f"{DETAILS}?order_id={order_id}", key=t["sdk_key"])


async def order(api: Api, t: dict[str, Any], order_id: str) -> dict[str, Any]:
    resp = await details(api, t, order_id)
    assert resp.status == 200, resp
    return dict(resp.body)


async def order_reaches(api: Api, t: dict[str, Any], order_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        o = await order(api, t, order_id)
        return o if o["status"] == status else {}

    return await eventually(check, timeout_s=10)


def transitions(o: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(h["from"], h["to"]) for h in o["history"]]


async def check_ledger(api: Api) -> None:
    check = await api.get("/admin/ledger/check", admin=True)
    assert check.status == 200, check
    assert check.body["ok"] is True, check.body


async def sim(api: Api, stack: Stack, action: str, body: dict[str, Any] | None = None) -> Any:
    """A test control of the processor simulator."""
    assert api.session is not None
    url = f"{stack.env['INVO_PROCESSOR_API_BASE']}/_sim/{action}"
    method = "GET" if action == "state" else "POST"
    async with api.session.request(method, url, json=body if body is not None else {}) as resp:
        payload = await resp.json()
        assert resp.status == 200, (action, resp.status, payload)
        return payload


@asynccontextmanager
async def sim_faults(api: Api, stack: Stack, **faults: Any) -> AsyncIterator[None]:
    await sim(api, stack, "faults", faults)
    try:
        yield
    finally:
        await sim(api, stack, "reset")


def stripe_signature(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Stripe's scheme (as processor_sim.app.sign): v1 = hex HMAC-SHA256 of "<t>.<payload>"."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


async def send_processor_event(api: Api, payload: str, signature: str | None) -> Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await api.post(PROCESSOR_WEBHOOK, data=payload, headers=headers)


def processor_event(event_type: str, obj: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": f"evt_test_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": "2025-01-27.acacia",
            "created": int(time.time()),
            "livemode": False,
            "type": event_type,
            "data": {"object": obj},
        }
    )


class Events:
    """Every purchase.* event of one tenant on JetStream, by order."""

    def __init__(self, stack: Stack, tenant_id: str) -> None:
        self.stack = stack
        self.tenant_id = tenant_id
        self.seen: dict[str, dict[str, Any]] = {}  # event_id -> event

    def of(self, order_id: str, event_type: str) -> list[dict[str, Any]]:
        return [
            e for e in self.seen.values() if e["event_type"] == event_type and e["data"].get("order_id") == order_id
        ]

    async def collect_until(self, order_id: str, event_type: str) -> None:
        def done(found: Seen) -> bool:
            for _, event in sorted(found.items()):
                self.seen[event["event_id"]] = event
            return bool(self.of(order_id, event_type))

        await read_events(self.stack, self.tenant_id, "purchase", done, timeout_s=15)
