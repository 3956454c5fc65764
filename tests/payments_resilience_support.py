"""What the tests of currency purchases when things go wrong share: the processor simulator and
its controls (faults, held webhooks, its record of charges), purchase and order calls, and the
proof that a purchase was charged once and credited once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from devstack.stack import Stack
from tests import payments_support
from tests.helpers import Api, Response, eventually

PURCHASE = "/api/currency-purchases/purchase-currency"
CONFIRM = "/api/currency-purchases/confirm-payment"
ORDER = "/api/currency-purchases/order-details"
VISA = "pm_card_visa"
DECLINED = "pm_card_chargeDeclined"
THREE_DS = "pm_card_authenticationRequired"
CAPS_50_A_DAY = {"hourly_usd": "1000.00", "daily_usd": "50.00", "monthly_usd": "1000.00"}


# -- the processor simulator ------------------------------------------------------------------


class Sim:
    """The simulator's test controls, and its REST API where a test plays the client-side SDK."""

    def __init__(self, base: str, secret_key: str) -> None:
        self.base = base
        self.secret_key = secret_key
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        await self.session.close()

    async def control(self, action: str, body: dict[str, Any] | None = None) -> Any:
        async with self.session.post(f"{self.base}/_sim/{action}", json=body or {}) as resp:
            payload = await resp.json()
            assert resp.status == 200, (action, resp.status, payload)
            return payload

    async def faults(self, **faults: Any) -> None:
        await self.control("faults", faults)

    async def reset(self) -> None:
        await self.control("reset")

    async def state(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/_sim/state") as resp:
            assert resp.status == 200
            return dict(await resp.json())

    async def intents(self, *, order_id: str | None = None, reference: str | None = None) -> list[dict[str, Any]]:
        """The PaymentIntents created for one order (or one purchase_reference)."""
        found = []
        for pi in (await self.state())["intents"]:
            meta = pi.get("metadata") or {}
            if order_id is not None and meta.get("order_id") == order_id:
                found.append(pi)
            elif reference is not None and meta.get("purchase_reference") == reference:
                found.append(pi)
        return found

    async def payment_intent_posts(self) -> int:
        return sum(
            1 for method, path in (await self.state())["calls"] if (method, path) == ("POST", "/v1/payment_intents")
        )

    async def three_d_secure(self, payment_intent: str, result: str) -> None:
        await self.control("three_d_secure", {"payment_intent": payment_intent, "result": result})

    async def release_webhooks(self, order: str = "reverse") -> int:
        return int((await self.control("release_webhooks", {"order": order}))["released"])

    async def client_confirm(self, payment_intent: str, payment_method: str) -> dict[str, Any]:
        """What the card collector's client SDK does when the player tries again on the same intent."""
        async with self.session.post(
            f"{self.base}/v1/payment_intents/{payment_intent}/confirm",
            data={"payment_method": payment_method},
            headers={"Authorization": f"Bearer {self.secret_key}"},
        ) as resp:
            body = dict(await resp.json())
            assert resp.status == 200, body
            return body


@pytest.fixture
async def sim(stack: Stack) -> AsyncIterator[Sim]:
    s = Sim(stack.env["INVO_PROCESSOR_API_BASE"], stack.env["INVO_PROCESSOR_SECRET_KEY"])
    try:
        await s.reset()
        yield s
    finally:
        try:
            await s.reset()
        finally:
            await s.close()


# -- helpers ----------------------------------------------------------------------------------


def ref() -> str:
    return str(uuid.uuid4())


def email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


async def tenant(api: Api, **settings: Any) -> dict[str, Any]:
    return await api.create_tenant(rate_limit_per_second=1000, **settings)


async def purchase(
    api: Api, t: dict[str, Any], player: str, reference: str, usd: str = "10.00", pm: str = VISA
) -> Response:
    return await api.post(
        PURCHASE,
        key=t["sdk_key"],
        json={"player_email": player, "usd_amount": usd, "payment_method_id": pm, "purchase_reference": reference},
    )


balance = payments_support.balance  # the one balance read, under the name these tests use


async def order(api: Api, t: dict[str, Any], order_id: str) -> dict[str, Any]:
    resp = await api.get(f"{ORDER}?order_id={order_id}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return dict(resp.body)


async def order_id_of(sim: Sim, reference: str) -> str:
    """The order behind a purchase_reference, read from the PaymentIntent's metadata."""
    intents = await eventually(lambda: sim.intents(reference=reference))
    return str(intents[0]["metadata"]["order_id"])


async def check_ledger(api: Api) -> None:
    check = await api.get("/admin/ledger/check", admin=True)
    assert check.status == 200, check
    assert check.body["ok"] is True, check.body
    assert check.body["total_balance"] == "0", check.body


async def assert_charged_once(
    api: Api, sim: Sim, t: dict[str, Any], player: str, order_id: str, units: str = "100"
) -> dict[str, Any]:
    """One PaymentIntent for the order at the processor, succeeded; one credit; the order completed."""
    intents = await sim.intents(order_id=order_id)
    assert len(intents) == 1, intents
    assert intents[0]["status"] == "succeeded", intents[0]
    assert await balance(api, t, player) == units
    details = await order(api, t, order_id)
    assert details["status"] == "completed", details
    assert details["payment_intent_id"] == intents[0]["id"]
    assert details["transaction_id"].startswith("txn_")
    assert [h["to"] for h in details["history"]].count("completed") == 1, details["history"]
    await check_ledger(api)
    return details


async def settle(api: Api, t: dict[str, Any], player: str, reference: str, usd: str = "10.00") -> Response:
    """Retry a purchase with the same reference until it is no longer in flight (the client's loop)."""

    async def attempt() -> Response | None:
        resp = await purchase(api, t, player, reference, usd)
        assert resp.status in (200, 409, 503), resp
        return resp if resp.status == 200 else None

    resp = await eventually(attempt, timeout_s=20, interval_s=0.25)
    assert resp is not None and resp.body["status"] == "success", resp
    return resp
