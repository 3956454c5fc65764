"""What the webhooks tests share: the partner's endpoint they deliver to, and the calls that
send events and read the delivery log.

Each test runs its own receiver: an aiohttp server on a free loopback port that records every
request (headers, raw body, the answer it gave) and can be told to fail, stall or redirect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import stripe
from aiohttp import web
from multidict import CIMultiDict

from devstack.devservers import free_port
from devstack.stack import Stack
from tests.helpers import Api, eventually

T = TypeVar("T")

# The thread services are restarted from, so the test's loop (which runs the receivers) never
# blocks while a service restarts. (Stack starts every process from its own long-lived thread, so
# the thread used here does not matter for PR_SET_PDEATHSIG.)
RESTARTER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhooks-restarter")

ENVELOPE = {"event_id", "event_type", "created_at", "tenant_id", "data"}
RESPONSE_BODY_MAX = 1024  # the first KB of a partner's answer is kept in the attempt log


# -- the receiver ------------------------------------------------------------------------------


@dataclass
class Call:
    headers: CIMultiDict[str]
    body: bytes
    at: float
    answered: int | None = None  # the status we answered; None while still working on it
    event_id: str = ""

    def __post_init__(self) -> None:
        self.event_id = str(self.event["event_id"])

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A partner's endpoint. `fail_first` answers 500 to the first N calls, `failing` to every
    call, `fail_types` to events of those types; `delay_s` stalls each call (until `fast` is set);
    `redirect_to` answers 302 to it."""

    port: int = field(default_factory=free_port)
    path: str = field(default_factory=lambda: f"/hook/{secrets.token_hex(6)}")
    calls: list[Call] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)  # requests to any other path
    in_flight: int = 0
    fail_first: int = 0
    failing: bool = False
    fail_types: set[str] = field(default_factory=set)
    fail_body: str = "receiver is down"
    delay_s: float = 0.0
    redirect_to: str | None = None
    fast: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        self.fast.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != self.path:
            self.stray.append(request.path)
            return web.Response(status=404)
        self.in_flight += 1  # from the first byte until the answer
        try:
            call = Call(headers=CIMultiDict(request.headers), body=await request.read(), at=time.monotonic())
            index = len(self.calls)
            self.calls.append(call)
            if self.delay_s > 0 and not self.fast.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.fast.wait(), self.delay_s)
            if self.redirect_to is not None:
                call.answered = 302
                return web.Response(status=302, headers={"Location": self.redirect_to})
            failed = index < self.fail_first or self.failing or call.event.get("event_type") in self.fail_types
            call.answered = 500 if failed else 200
            return web.Response(status=call.answered, text=self.fail_body if failed else "ok")
        finally:
            self.in_flight -= 1

    # -- what it saw

    def of(self, event_id: str) -> list[Call]:
        return [c for c in self.calls if c.event_id == event_id]

    def event_ids(self) -> set[str]:
        return {c.event_id for c in self.calls}

    def answered(self) -> list[Call]:
        return [c for c in self.calls if c.answered is not None]


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make(**kw: Any) -> Receiver:
        rx = Receiver(**kw)
        await rx.start()
        started.append(rx)
        return rx

    try:
        yield make
    finally:
        for rx in started:
            await rx.close()


# -- helpers -----------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[T | None]], *, timeout_s: float = 10, interval_s: float = 0.05) -> T:
    """`eventually`, for a check that answers the value it waited for (None until then)."""
    result = await eventually(check, timeout_s=timeout_s, interval_s=interval_s)
    assert result is not None
    return result


def now_iso(delta_s: float = 0.0) -> str:
    """A time as ISO 8601 with a Z (no "+", which a query string would turn into a space)."""
    return (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delta_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def schedule(stack: Stack) -> list[float]:
    return [float(x) for x in stack.env["INVO_WEBHOOK_RETRY_SCHEDULE_S"].split(",") if x.strip()]


def verify(call: Call, secret: str) -> None:
    """Stripe's verifier, independent of our code: raises stripe.SignatureVerificationError."""
    stripe.WebhookSignature.verify_header(call.body.decode(), call.headers["X-Invo-Signature"], secret, tolerance=300)


def verifies(call: Call, secret: str) -> bool:
    try:
        verify(call, secret)
    except stripe.SignatureVerificationError:
        return False
    return True


def v1_count(call: Call) -> int:
    return sum(1 for part in call.headers["X-Invo-Signature"].split(",") if part.startswith("v1="))


async def tenant_for(api: Api, rx: Receiver, **kw: Any) -> dict[str, Any]:
    return await api.create_tenant(webhook_url=rx.url, rate_limit_per_second=10_000, **kw)


async def send_test(api: Api, key: str) -> dict[str, Any]:
    resp = await api.post("/api/webhooks/test", key=key)
    assert resp.status == 201, resp
    assert resp.body["event_type"] == "webhook.test"
    return dict(resp.body)


async def credit(api: Api, tenant_id: str, email: str = "player@example.com", amount: str = "10") -> None:
    resp = await api.credit(tenant_id, email, amount, reason="webhook test")
    assert resp.status == 200, resp


async def show(api: Api, key: str, delivery_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/webhooks/deliveries/{delivery_id}", key=key)
    assert resp.status == 200, resp
    return dict(resp.body)


async def settled(api: Api, key: str, delivery_id: str, status: str, *, timeout_s: float = 15) -> dict[str, Any]:
    """Wait until the delivery reaches `status` and answer it with its attempt log."""

    async def check() -> dict[str, Any] | None:
        d = await show(api, key, delivery_id)
        return d if d["status"] == status else None

    return await until(check, timeout_s=timeout_s, interval_s=0.1)


async def list_all(api: Api, path: str, **kw: Any) -> list[dict[str, Any]]:
    """Every page of a delivery list, following next_cursor."""
    out: list[dict[str, Any]] = []
    cursor = ""
    sep = "&" if "?" in path else "?"
    while True:
        resp = await api.get(f"{path}{sep}limit=100" + (f"&cursor={cursor}" if cursor else ""), **kw)
        assert resp.status == 200, resp
        out += resp.body["data"]
        if not resp.body["has_more"]:
            return out
        cursor = resp.body["next_cursor"]


async def delivered_call(api: Api, rx: Receiver, key: str) -> Call:
    """Send a test event and answer the request it made to the receiver."""
    d = await send_test(api, key)

    async def arrived() -> Call | None:
        got = [c for c in rx.of(d["event_id"]) if c.answered]
        return got[0] if got else None

    return await until(arrived, timeout_s=10)


async def _true(value: bool) -> bool:
    return value
