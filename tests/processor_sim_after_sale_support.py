"""The processor simulator run in-process for one test of tests/test_processor_sim_after_sale.py,
with a webhook receiver of its own that checks each event's signature with the SDK's verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web

from devstack.devservers import free_port
from devstack.processor_sim.app import Simulator, create_app
from devstack.processor_sim.state import Journal

SK = "sk_test_after_sale"
PK = "pk_test_after_sale"
WHSEC = "whsec_after_sale"
WAIT_S = 10.0
CARD = {"card[exp_month]": "12", "card[exp_year]": "2034", "card[cvc]": "123"}


class Hooks:
    """The webhook endpoint: every verified event, in the order it arrived."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.text()
        stripe.WebhookSignature.verify_header(payload, request.headers.get("Stripe-Signature"), WHSEC, 300)
        async with self.changed:
            self.events.append(json.loads(payload))
            self.changed.notify_all()
        return web.Response(text="ok")

    def of(self, event_type: str, **fields: Any) -> list[dict[str, Any]]:
        """The events of this type whose object has these fields."""
        return [
            e
            for e in self.events
            if e["type"] == event_type and all(e["data"]["object"].get(k) == v for k, v in fields.items())
        ]

    async def wait(self, event_type: str, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        async with self.changed, asyncio.timeout(WAIT_S):
            await self.changed.wait_for(lambda: len(self.of(event_type, **fields)) >= count)
        return self.of(event_type, **fields)

    async def wait_for(self, done: Callable[[], bool]) -> None:
        async with self.changed, asyncio.timeout(WAIT_S):
            await self.changed.wait_for(done)


@dataclasses.dataclass
class Sim:
    sim: Simulator
    url: str
    http: aiohttp.ClientSession
    client: stripe.StripeClient
    hooks: Hooks

    async def control(self, action: str, **body: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.url}/_sim/{action}", json=body) as resp:
            return resp.status, await resp.json()

    async def pay(self, pm: str = "pm_card_visa", amount: int = 1000) -> Any:
        """A PaymentIntent charged at once, with our metadata, as the payments service makes it."""
        pi = await self.client.v1.payment_intents.create_async(
            params={
                "amount": amount,
                "currency": "usd",
                "payment_method": pm,
                "confirm": True,
                "metadata": {"order_id": "ord_1"},
            }
        )
        assert pi.status == "succeeded"
        return pi

    async def card(self, number: str) -> str:
        """A PaymentMethod made from a card number, as the card field makes it."""
        data = {"type": "card", "card[number]": number, **CARD}
        headers = {"Authorization": f"Bearer {PK}"}
        async with self.http.post(f"{self.url}/v1/payment_methods", data=data, headers=headers) as resp:
            assert resp.status == 200
            return str((await resp.json())["id"])

    async def refund(self, **params: Any) -> Any:
        body: Any = params  # the SDK's TypedDict, spelled loosely to try wrong values too
        return await self.client.v1.refunds.create_async(params=body)

    def charge(self, pi: Any) -> dict[str, Any]:
        return self.sim.charges[pi.latest_charge]


@contextlib.asynccontextmanager
async def running(journal: pathlib.Path) -> AsyncIterator[Sim]:
    hooks = Hooks()
    receiver_app = web.Application()
    receiver_app.router.add_post("/hooks", hooks.handle)
    receiver = web.AppRunner(receiver_app, access_log=None)
    await receiver.setup()
    hook_port = free_port()
    await web.TCPSite(receiver, "127.0.0.1", hook_port).start()
    sim = Simulator(
        secret_key=SK,
        webhook_secret=WHSEC,
        webhook_url=f"http://127.0.0.1:{hook_port}/hooks",
        journal=Journal(journal),
        publishable_key=PK,
    )
    runner = web.AppRunner(create_app(sim), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    sdk_http = stripe.AIOHTTPClient()
    try:
        async with aiohttp.ClientSession() as http:
            # The SDK as the payments service holds it (services/payments/processor.py).
            client = stripe.StripeClient(SK, base_addresses={"api": url}, http_client=sdk_http, max_network_retries=0)
            yield Sim(sim, url, http, client, hooks)
    finally:
        await sdk_http.close_async()
        await runner.cleanup()  # closes the simulator and its journal
        await receiver.cleanup()


@pytest.fixture
async def s(tmp_path: pathlib.Path) -> AsyncIterator[Sim]:
    async with running(tmp_path / "state.jsonl") as sim:
        yield sim


def refused(exc: pytest.ExceptionInfo[stripe.InvalidRequestError]) -> tuple[int | None, str | None, str | None]:
    return exc.value.http_status, exc.value.code, exc.value.param
