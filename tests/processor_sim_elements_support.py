"""The processor simulator run in-process for one test, as a hosted checkout page meets it
(tests/test_processor_sim_elements.py, and its browser half in
tests/test_processor_sim_elements_browser.py): its REST API as a page and the `stripe` SDK call it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
import stripe
from aiohttp import web

from devstack.devservers import free_port
from devstack.processor_sim.app import Simulator, create_app
from devstack.processor_sim.state import Journal

SK = "sk_test_elements"
PK = "pk_test_elements"
CARD = {"card[exp_month]": "12", "card[exp_year]": "2034", "card[cvc]": "123"}
WAIT_MS = 10_000
POLL_S = 0.05


@dataclasses.dataclass
class Sim:
    sim: Simulator
    url: str
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, *, key: str = SK, data: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        async with self.http.request(method, self.url + path, data=data, headers=headers, **kw) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, body, resp.headers

    async def new_card(self, number: str, **fields: str) -> dict[str, Any]:
        status, body, _ = await self.call(
            "POST", "/v1/payment_methods", key=PK, data={"type": "card", "card[number]": number, **CARD, **fields}
        )
        assert status == 200, body
        return body

    async def charge(self, pm: str, **params: str) -> tuple[int, dict[str, Any]]:
        data = {"amount": "1000", "currency": "usd", "payment_method": pm, "confirm": "true", **params}
        status, body, _ = await self.call("POST", "/v1/payment_intents", data=data)
        return status, body


@contextlib.asynccontextmanager
async def running(journal: pathlib.Path) -> AsyncIterator[Sim]:
    sim = Simulator(
        secret_key=SK, webhook_secret="whsec_x", webhook_url="", journal=Journal(journal), publishable_key=PK
    )
    runner = web.AppRunner(create_app(sim), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Sim(sim, f"http://127.0.0.1:{port}", http)
    finally:
        await runner.cleanup()  # closes the simulator and its journal


@pytest_asyncio.fixture(loop_scope="module")  # the module's loop: the browser's, too
async def sim(tmp_path: pathlib.Path) -> AsyncIterator[Sim]:
    async with running(tmp_path / "state.jsonl") as s:
        yield s


@contextlib.asynccontextmanager
async def sdk(s: Sim) -> AsyncIterator[stripe.StripeClient]:
    """The `stripe` SDK as the payments service holds it: only the base address is the simulator's."""
    http = stripe.AIOHTTPClient()
    try:
        yield stripe.StripeClient(SK, base_addresses={"api": s.url}, http_client=http, max_network_retries=0)
    finally:
        await http.close_async()
