"""Webhooks end to end: every event reaches the tenant's endpoint, signed (checked with Stripe's own
verifier), retried by the schedule, recorded in a delivery log partners and operators can read and
redeliver from, at least once across a crash of the webhooks service, with slow partners isolated
and production endpoints kept out of our network.

Each test runs its own receiver: an aiohttp server on a free loopback port that records every
request (headers, raw body, the answer it gave) and can be told to fail, stall or redirect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import itertools
import json
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import nats
import pytest
import stripe
from aiohttp import web
from google.protobuf import timestamp_pb2
from invo.v1 import webhooks_pb2, webhooks_pb2_grpc
from multidict import CIMultiDict

from services.common import errors, grpcutil
from services.common.devservers import free_port
from services.common.stack import Stack
from tests.helpers import Api, assert_envelope, eventually

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
    resp = await api.post(
        "/admin/players/credit",
        admin=True,
        json={
            "tenant_id": tenant_id,
            "player_email": email,
            "amount": amount,
            "reason": "webhook test",
            "idempotency_key": uuid.uuid4().hex,
        },
    )
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


# -- 1. signatures and the envelope -----------------------------------------------------------


async def test_every_delivery_verifies_with_stripes_verifier_and_a_tampered_body_does_not(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx, currency_name="Stars")
    secret = t["webhook_signing_secret"]
    assert secret.startswith("whsec_")
    # Three kinds of event: an admin credit, an item purchase (both through the outbox and
    # JetStream) and a test event.
    await credit(api, t["tenant_id"], "fan@example.com", "10")
    purchase = await api.post(
        "/api/item-purchases/purchase-item",
        key=t["sdk_key"],
        json={
            "player_email": "fan@example.com",
            "item_id": "sword_01",
            "item_name": "Iron Sword",
            "price": "2.5",
            "idempotency_key": "sig-1",
        },
    )
    assert purchase.status == 200, purchase
    test = await send_test(api, t["sdk_key"])

    async def three() -> bool:
        return {c.event["event_type"] for c in rx.answered()} == {"balance.adjusted", "item.purchased", "webhook.test"}

    await eventually(three, timeout_s=15)
    assert len(rx.calls) == 3 and not rx.stray
    for call in rx.calls:
        verify(call, secret)  # passes
        body_text = call.body.decode()
        assert call.headers["Content-Type"] == "application/json"
        event = call.event
        assert set(event) == ENVELOPE
        assert call.headers["X-Invo-Event-Id"] == event["event_id"]
        assert event["tenant_id"] == t["tenant_id"]
        datetime.datetime.fromisoformat(event["created_at"].replace("Z", "+00:00"))
        sig = call.headers["X-Invo-Signature"]
        assert sig.startswith("t=") and v1_count(call) == 1
        assert abs(int(sig.split(",")[0][2:]) - time.time()) < 60
        # One byte changed anywhere: rejected.
        for i in (0, len(body_text) // 2, len(body_text) - 1):
            tampered = body_text[:i] + ("x" if body_text[i] != "x" else "y") + body_text[i + 1 :]
            with pytest.raises(stripe.SignatureVerificationError):
                stripe.WebhookSignature.verify_header(tampered, sig, secret, tolerance=300)
        # Another tenant's secret, or a stale timestamp: rejected.
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.WebhookSignature.verify_header(body_text, sig, "whsec_" + "x" * 32, tolerance=300)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.WebhookSignature.verify_header(
                body_text, sig.replace(sig.split(",")[0], f"t={int(time.time()) - 3600}"), secret, tolerance=300
            )
    by_type = {c.event["event_type"]: c.event for c in rx.calls}
    assert by_type["webhook.test"]["event_id"] == test["event_id"]
    assert by_type["item.purchased"]["data"]["transaction_id"] == purchase.body["transaction_id"]
    assert by_type["item.purchased"]["data"]["price"] == "2.50"
    assert by_type["balance.adjusted"]["data"]["amount"] == "10"
    assert by_type["balance.adjusted"]["data"]["currency_name"] == "Stars"
    # The delivery log agrees: three delivered, one attempt each, answered 200.
    log = await list_all(api, "/api/webhooks/deliveries", key=t["sdk_key"])
    assert sorted(d["event_id"] for d in log) == sorted(c.event_id for c in rx.calls)
    for d in log:
        assert d["status"] == "delivered" and d["attempts"] == 1 and d["url"] == rx.url
        assert d["delivered_at"] is not None and d["next_attempt_at"] is None


# -- 2. secret rotation --------------------------------------------------------------------------


async def delivered_call(api: Api, rx: Receiver, key: str) -> Call:
    """Send a test event and answer the request it made to the receiver."""
    d = await send_test(api, key)

    async def arrived() -> Call | None:
        got = [c for c in rx.of(d["event_id"]) if c.answered]
        return got[0] if got else None

    return await until(arrived, timeout_s=10)


async def rotate(api: Api, t: dict[str, Any], overlap_s: int, *, admin: bool = False) -> str:
    if admin:
        resp = await api.post(
            f"/admin/tenants/{t['tenant_id']}/webhook-secret/rotate", admin=True, json={"overlap_seconds": overlap_s}
        )
    else:
        resp = await api.post("/api/webhooks/rotate-secret", key=t["sdk_key"], json={"overlap_seconds": overlap_s})
    assert resp.status == 201, resp
    secret = str(resp.body["webhook_signing_secret"])
    assert secret.startswith("whsec_")
    expires = datetime.datetime.fromisoformat(resp.body["previous_expires_at"].replace("Z", "+00:00"))
    expected = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=overlap_s)
    assert abs((expires - expected).total_seconds()) < 60
    return secret


async def test_rotation_signs_with_both_secrets_during_the_overlap_and_only_the_new_one_after(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    s0 = t["webhook_signing_secret"]
    s1 = await rotate(api, t, 3600)
    # The first delivery after the rotation carries two v1= entries: either secret verifies it.
    call = await delivered_call(api, rx, t["sdk_key"])
    assert v1_count(call) == 2, call.headers["X-Invo-Signature"]
    verify(call, s1)
    verify(call, s0)

    # A rotation without overlap: the new secret only, from the very next delivery on.
    s2 = await rotate(api, t, 0)

    async def signed_once() -> Call | None:
        c = await delivered_call(api, rx, t["sdk_key"])
        return c if v1_count(c) == 1 and verifies(c, s2) else None

    call = await until(signed_once, timeout_s=15, interval_s=0.3)
    verify(call, s2)
    for dead in (s0, s1):
        with pytest.raises(stripe.SignatureVerificationError):
            verify(call, dead)

    # The operator's rotation works the same way.
    s3 = await rotate(api, t, 60, admin=True)

    async def signed_twice() -> Call | None:
        c = await delivered_call(api, rx, t["sdk_key"])
        return c if v1_count(c) == 2 else None

    call = await until(signed_twice, timeout_s=15, interval_s=0.3)
    verify(call, s3)
    verify(call, s2)
    assert not verifies(call, s1) and not verifies(call, s0)
    # Every request the receiver ever got verifies with one of the secrets live when it was sent.
    assert all(any(verifies(c, s) for s in (s0, s1, s2, s3)) for c in rx.calls)

    # Bad input.
    for body, code in [
        ({"overlap_seconds": -1}, "INVALID_PARAMETER"),
        ({"overlap_seconds": 30 * 86400 + 1}, "INVALID_PARAMETER"),
        ({"overlap_seconds": "60"}, "INVALID_PARAMETER"),
        ({"overlap_seconds": True}, "INVALID_PARAMETER"),
        ({"overlap": 60}, "UNKNOWN_FIELD"),
    ]:
        assert_envelope(await api.post("/api/webhooks/rotate-secret", key=t["sdk_key"], json=body), 400, code)
    missing = await api.post("/admin/tenants/tn_nope/webhook-secret/rotate", admin=True, json={})
    assert missing.status == 404, missing


async def test_a_rotation_signs_the_very_next_delivery_with_the_new_secret(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    old = t["webhook_signing_secret"]
    await delivered_call(api, rx, t["sdk_key"])  # the service has looked the tenant up
    new = await rotate(api, t, 0)  # e.g. the old secret leaked
    call = await delivered_call(api, rx, t["sdk_key"])
    assert verifies(call, new), "the delivery after the rotation is not signed with the new secret"
    assert not verifies(call, old), "the revoked secret still signs"


# -- 3, 4. retries, failure, redelivery --------------------------------------------------------


async def test_a_receiver_down_for_four_attempts_gets_the_event_on_the_fifth_once(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers(fail_first=4)
    t = await tenant_for(api, rx)
    d = await send_test(api, t["sdk_key"])
    assert d["status"] == "pending" and d["attempts"] == 0
    done = await settled(api, t["sdk_key"], d["delivery_id"], "delivered")
    log = done["attempt_log"]
    assert done["attempts"] == 5 and len(log) == 5
    assert [a["status_code"] for a in log] == [500, 500, 500, 500, 200]
    assert [a["attempt"] for a in log] == [1, 2, 3, 4, 5]
    assert [a["response_body"] for a in log] == ["receiver is down"] * 4 + ["ok"]
    assert all(a["error"] is None and a["latency_ms"] >= 0 for a in log)
    # The retries keep to the schedule: each waits at least its entry after the attempt before
    # (timed at the receiver: the log's times are whole seconds).
    arrivals = [c.at for c in rx.of(d["event_id"])]
    for gap, wait in zip([b - a for a, b in itertools.pairwise(arrivals)], schedule(stack), strict=False):
        assert gap >= wait - 0.01, (gap, wait)
    assert done["delivered_at"] is not None and done["next_attempt_at"] is None
    # Once: a later event goes through, and the first one has still been seen five times only.
    await delivered_call(api, rx, t["sdk_key"])
    calls = rx.of(d["event_id"])
    assert len(calls) == 5
    assert [c.answered for c in calls] == [500, 500, 500, 500, 200]


async def test_a_receiver_failing_forever_ends_failed_and_is_redelivered_once_it_recovers(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers(failing=True, fail_body="down for maintenance " * 100)
    t = await tenant_for(api, rx)
    other = await api.create_tenant(webhook_url=rx.url)  # another tenant with failures of its own
    before = now_iso(-1)
    d1 = await send_test(api, t["sdk_key"])
    d2 = await send_test(api, t["sdk_key"])
    d3 = await send_test(api, other["sdk_key"])
    expected = 1 + len(schedule(stack))
    assert expected == 7
    failed = await settled(api, t["sdk_key"], d1["delivery_id"], "failed")
    await settled(api, t["sdk_key"], d2["delivery_id"], "failed")
    await settled(api, other["sdk_key"], d3["delivery_id"], "failed")
    log = failed["attempt_log"]
    assert failed["attempts"] == expected and len(log) == expected
    assert [a["attempt"] for a in log] == list(range(1, expected + 1))
    for a in log:
        assert a["status_code"] == 500 and a["error"] is None
        assert isinstance(a["latency_ms"], int) and a["latency_ms"] >= 0
        assert a["response_body"] == ("down for maintenance " * 100)[:RESPONSE_BODY_MAX]
    assert failed["next_attempt_at"] is None and failed["delivered_at"] is None
    assert len(rx.of(d1["event_id"])) == expected

    # The receiver recovers; one redelivery by id.
    rx.failing = False
    resp = await api.post(f"/api/webhooks/deliveries/{d1['delivery_id']}/redeliver", key=t["sdk_key"])
    assert resp.status == 200, resp
    assert resp.body["delivery_id"] == d1["delivery_id"] and resp.body["status"] in ("pending", "delivered")
    done = await settled(api, t["sdk_key"], d1["delivery_id"], "delivered")
    assert done["attempts"] == expected + 1
    assert [a["status_code"] for a in done["attempt_log"]] == [500] * expected + [200]
    assert [c.answered for c in rx.of(d1["event_id"])] == [500] * expected + [200]

    # Everything that failed since a time: this tenant's one remaining failure, not the other's.
    later = await api.post("/api/webhooks/redeliver-failed", key=t["sdk_key"], json={"since": now_iso(60)})
    assert later.status == 200 and later.body == {"redelivered": 0}, later
    resp = await api.post("/api/webhooks/redeliver-failed", key=t["sdk_key"], json={"since": before})
    assert resp.status == 200 and resp.body == {"redelivered": 1}, resp
    await settled(api, t["sdk_key"], d2["delivery_id"], "delivered")
    assert (await show(api, other["sdk_key"], d3["delivery_id"]))["status"] == "failed"
    assert [c.answered for c in rx.of(d2["event_id"])][-1] == 200
    # Nothing failed is left to redeliver.
    again = await api.post("/api/webhooks/redeliver-failed", key=t["sdk_key"], json={"since": before})
    assert again.body == {"redelivered": 0}, again


# -- 5. a crash of the webhooks service with deliveries in flight ------------------------------


async def test_killing_the_webhooks_service_with_1000_events_in_flight_delivers_each_at_least_once(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    n = 1000
    rx = await receivers(delay_s=0.1)
    t = await tenant_for(api, rx)
    tid = t["tenant_id"]
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"])
    try:
        started = time.monotonic()
        for chunk in range(0, n, 100):
            await asyncio.gather(*(credit(api, tid, f"p{i}@example.com", "1") for i in range(chunk, chunk + 100)))
        made_s = time.monotonic() - started

        async def all_recorded() -> bool:
            count = await conn.fetchval("SELECT count(*) FROM webhooks.deliveries WHERE tenant_id = $1", tid)
            return int(count) == n

        # Every event is recorded before the kill (so none waits out JetStream's 30 s ack_wait),
        # and the receiver has seen some of them but not all.
        await eventually(all_recorded, timeout_s=30)
        await eventually(lambda: _true(len(rx.event_ids()) >= 50), timeout_s=30)
        # The kill, then the count: with the service dead, the leases it held are exactly the
        # deliveries it had claimed and not finished (the ones in flight, and any it had claimed
        # and was about to hand back); nothing changes them until it is started again.
        old = stack.procs["webhooks"]
        loop = asyncio.get_running_loop()
        seen_at_kill = len(rx.event_ids())
        rx_in_flight = rx.in_flight  # no await in between: the receiver is as the kill finds it
        old.send_signal(signal.SIGKILL)
        await loop.run_in_executor(RESTARTER, old.wait, 10)
        leased = int(
            await conn.fetchval(
                "SELECT count(*) FROM webhooks.deliveries"
                " WHERE tenant_id = $1 AND status = 'pending' AND lease_until > now()",
                tid,
            )
        )
        # Started again (stack.restart finds it dead already and only starts and waits for it).
        await loop.run_in_executor(RESTARTER, functools.partial(stack.restart, "webhooks", sig=signal.SIGKILL))
        assert stack.procs["webhooks"].pid != old.pid and stack.procs["webhooks"].poll() is None
        assert seen_at_kill < n, "the receiver had everything before the kill: nothing was in flight"

        async def all_delivered() -> bool:
            if len(rx.event_ids()) < n:
                return False
            for status in ("pending", "failed"):
                resp = await api.get(f"/api/webhooks/deliveries?status={status}&limit=1", key=t["sdk_key"])
                if resp.body["data"]:
                    return False
            return True

        await eventually(all_delivered, timeout_s=60, interval_s=0.25)
        elapsed_s = time.monotonic() - started
    finally:
        await conn.close()

    log = await list_all(api, "/api/webhooks/deliveries", key=t["sdk_key"])
    assert len(log) == n and {d["status"] for d in log} == {"delivered"}
    assert {d["event_id"] for d in log} == rx.event_ids()
    assert {d["event_type"] for d in log} == {"balance.adjusted"}
    received = len(rx.calls)
    duplicates = received - n
    print(
        f"\n1000 events: made in {made_s:.1f}s, all delivered after {elapsed_s:.1f}s; at the kill the receiver"
        f" had seen {seen_at_kill}, had {rx_in_flight} requests in flight, the database held {leased} leases;"
        f" duplicates {duplicates}"
    )
    assert len(rx.event_ids()) == n
    assert 0 <= duplicates <= leased, (duplicates, leased)
    # And never more than one endpoint may have in flight at once.
    assert duplicates <= int(stack.env.get("INVO_WEBHOOK_PER_ENDPOINT_MAX", "8")), duplicates
    # Every attempt the log recorded reached the receiver; the ones cut off by the kill are not in it.
    assert all(d["attempts"] >= 1 for d in log)
    assert sum(d["attempts"] for d in log) <= received


async def _true(value: bool) -> bool:
    return value


# -- 6. a slow partner does not hold up the others --------------------------------------------


async def test_one_slow_endpoint_never_delays_other_tenants(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    slow = await receivers(delay_s=1.9)  # just under the 2 s attempt timeout
    quick = await receivers()
    a = await tenant_for(api, slow)
    b = await tenant_for(api, quick)
    started = time.monotonic()
    sent = await asyncio.gather(
        *(send_test(api, a["sdk_key"]) for _ in range(30)), *(send_test(api, b["sdk_key"]) for _ in range(5))
    )
    b_ids = {d["event_id"] for d in sent[30:]}

    async def b_done() -> bool:
        return {c.event_id for c in quick.answered()} == b_ids

    await eventually(b_done, timeout_s=5, interval_s=0.02)
    b_s = time.monotonic() - started
    assert b_s < 1.5, b_s
    assert len(slow.answered()) < 30

    async def a_done() -> bool:
        return len({c.event_id for c in slow.answered()}) == 30

    await eventually(a_done, timeout_s=30, interval_s=0.1)
    a_s = time.monotonic() - started
    assert a_s > b_s + 3, (a_s, b_s)
    assert len(quick.calls) == 5 and len(slow.calls) == 30  # each once: 1.9 s is within the timeout
    for d in sent[:30]:
        assert (await show(api, a["sdk_key"], d["delivery_id"]))["status"] == "delivered"


async def test_a_slow_endpoint_with_a_backlog_never_delays_other_tenants(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    slow = await receivers(delay_s=1.9)
    quick = await receivers()
    a = await tenant_for(api, slow)
    b = await tenant_for(api, quick)
    try:
        await asyncio.gather(*(send_test(api, a["sdk_key"]) for _ in range(80)))
        await eventually(lambda: _true(slow.in_flight >= 8), timeout_s=5)
        started = time.monotonic()
        sent = await asyncio.gather(*(send_test(api, b["sdk_key"]) for _ in range(5)))
        b_ids = {d["event_id"] for d in sent}

        async def b_done() -> bool:
            return {c.event_id for c in quick.answered()} == b_ids

        await eventually(b_done, timeout_s=15, interval_s=0.02)
        b_s = time.monotonic() - started
        assert b_s < 1.5, f"tenant B's events waited {b_s:.1f}s behind tenant A's backlog"
    finally:
        slow.fast.set()  # answer the backlog at once, so it drains before the next test

        async def a_done() -> bool:
            return len({c.event_id for c in slow.answered()}) == 80

        await eventually(a_done, timeout_s=30, interval_s=0.1)


# -- 7. production endpoints: https, public addresses, no redirects ----------------------------


async def test_a_production_tenant_cannot_register_http(api: Api) -> None:
    resp = await api.post(
        "/admin/tenants",
        admin=True,
        json={
            "name": "Prod",
            "currency_name": "Gems",
            "environment": "production",
            "webhook_url": "http://example.com/h",
        },
    )
    assert_envelope(resp, 400, "INVALID_PARAMETER")
    assert resp.body["param"] == "webhook_url"
    assert "https" in resp.body["message"]
    ok = await api.create_tenant(environment="production", webhook_url="https://example.com/hook")
    patch = await api.patch(
        f"/admin/tenants/{ok['tenant_id']}", admin=True, json={"webhook_url": "http://example.com/hook"}
    )
    assert_envelope(patch, 400, "INVALID_PARAMETER")
    assert patch.body["param"] == "webhook_url"


async def test_a_production_delivery_to_a_loopback_address_is_refused(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    # host -> what the attempt log says. Literals are refused before connecting; names, and the
    # shorthands of 127.0.0.1 that Python's ipaddress does not parse, by the resolver on what they
    # resolve to. Each must name the refusal: any other error (a TLS failure against this plain
    # HTTP receiver) would mean the request went out.
    hosts: dict[str, str] = {
        "127.0.0.1": "refused: 127.0.0.1 is not a public address",
        "[::1]": "refused: ::1 is not a public address",
        "[::ffff:127.0.0.1]": "is not a public address",
        "localhost": "is not a public address",
        "127.1": "refused: 127.0.0.1 is not a public address",
        "2130706433": "refused: 127.0.0.1 is not a public address",
    }
    tenants = {
        host: await api.create_tenant(environment="production", webhook_url=f"https://{host}:{rx.port}{rx.path}")
        for host in hosts
    }
    sent = {host: await send_test(api, t["sdk_key"]) for host, t in tenants.items()}
    results = await asyncio.gather(
        *(settled(api, tenants[h]["sdk_key"], sent[h]["delivery_id"], "failed") for h in hosts)
    )
    for (host, says), failed in zip(hosts.items(), results, strict=True):
        assert failed["url"] == f"https://{host}:{rx.port}{rx.path}"
        assert len(failed["attempt_log"]) == 1 + len(schedule(stack)), host
        for a in failed["attempt_log"]:
            assert a["status_code"] is None and a["error"], (host, a)
            assert says in a["error"], (host, a)
    # Not one request reached the receiver.
    assert rx.calls == [] and rx.stray == []


async def test_a_refused_name_says_why_in_the_attempt_log(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await api.create_tenant(environment="production", webhook_url=f"https://localhost:{rx.port}{rx.path}")
    d = await send_test(api, t["sdk_key"])

    async def first_attempt() -> dict[str, Any] | None:
        got = await show(api, t["sdk_key"], d["delivery_id"])
        return got["attempt_log"][0] if got.get("attempt_log") else None

    attempt = await until(first_attempt)
    assert attempt["status_code"] is None and rx.calls == []
    assert "not a public address" in attempt["error"], attempt


async def test_redirects_are_not_followed(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    target = await receivers()
    rx = await receivers(redirect_to=target.url)
    t = await tenant_for(api, rx)
    d = await send_test(api, t["sdk_key"])
    failed = await settled(api, t["sdk_key"], d["delivery_id"], "failed")
    assert [a["status_code"] for a in failed["attempt_log"]] == [302] * (1 + len(schedule(stack)))
    assert all(a["error"] is None for a in failed["attempt_log"])
    assert len(rx.calls) == 1 + len(schedule(stack))
    assert target.calls == [] and target.stray == []


# -- 8. the delivery log: partners and operators -----------------------------------------------


async def test_the_delivery_log_filters_pages_isolates_and_redelivers(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers(fail_types={"balance.adjusted"})
    rx_b = await receivers()
    a = await tenant_for(api, rx)
    b = await tenant_for(api, rx_b)
    before = now_iso(-1)
    tests = [await send_test(api, a["sdk_key"]) for _ in range(3)]
    await credit(api, a["tenant_id"], "one@example.com")
    await credit(api, a["tenant_id"], "two@example.com")
    b_test = await send_test(api, b["sdk_key"])
    key = a["sdk_key"]

    async def settled_all() -> list[dict[str, Any]] | None:
        resp = await api.get("/api/webhooks/deliveries", key=key)
        data = resp.body["data"]
        return data if len(data) == 5 and all(d["status"] != "pending" for d in data) else None

    everything = await until(settled_all, timeout_s=20, interval_s=0.2)
    assert [d["delivery_id"] for d in everything] == sorted((d["delivery_id"] for d in everything), reverse=True)
    assert {d["tenant_id"] for d in everything} == {a["tenant_id"]}

    async def listed(query: str, k: str = key) -> list[str]:
        resp = await api.get(f"/api/webhooks/deliveries?{query}", key=k)
        assert resp.status == 200, resp
        return [d["delivery_id"] for d in resp.body["data"]]

    test_ids = {d["delivery_id"] for d in tests}
    failed_ids = {d["delivery_id"] for d in everything if d["event_type"] == "balance.adjusted"}
    assert len(failed_ids) == 2
    assert set(await listed("event_type=webhook.test")) == test_ids
    assert set(await listed("event_type=balance.adjusted&status=failed")) == failed_ids
    assert set(await listed("status=delivered")) == test_ids
    assert await listed("status=pending") == []
    assert await listed("event_type=item.purchased") == []
    assert len(await listed(f"since={before}")) == 5
    assert await listed(f"since={now_iso(60)}") == []
    assert await listed(f"until={before}") == []
    assert len(await listed(f"since={before}&until={now_iso(60)}")) == 5

    # Cursor paging, two at a time: every delivery once, newest first.
    pages: list[list[str]] = []
    cursor = ""
    while True:
        resp = await api.get("/api/webhooks/deliveries?limit=2" + (f"&cursor={cursor}" if cursor else ""), key=key)
        assert resp.status == 200, resp
        pages.append([d["delivery_id"] for d in resp.body["data"]])
        assert resp.body["next_cursor"] == pages[-1][-1]
        if not resp.body["has_more"]:
            break
        cursor = resp.body["next_cursor"]
    assert [len(p) for p in pages] == [2, 2, 1]
    flat = [i for p in pages for i in p]
    assert flat == [d["delivery_id"] for d in everything] and len(set(flat)) == 5
    paged = await api.get("/api/webhooks/deliveries?status=failed&limit=1", key=key)
    assert paged.body["has_more"] is True and len(paged.body["data"]) == 1
    last = await api.get(f"/api/webhooks/deliveries?status=failed&limit=1&cursor={paged.body['next_cursor']}", key=key)
    assert last.body["has_more"] is False and len(last.body["data"]) == 1
    assert {paged.body["data"][0]["delivery_id"], last.body["data"][0]["delivery_id"]} == failed_ids

    # One delivery with its attempt log.
    one = await show(api, key, tests[0]["delivery_id"])
    assert one["event_id"] == tests[0]["event_id"] and one["status"] == "delivered" and one["url"] == rx.url
    assert len(one["attempt_log"]) == 1
    attempt = one["attempt_log"][0]
    assert set(attempt) == {"attempt", "at", "status_code", "latency_ms", "response_body", "error"}
    assert (attempt["attempt"], attempt["status_code"], attempt["response_body"], attempt["error"]) == (
        1,
        200,
        "ok",
        None,
    )
    assert "attempt_log" not in everything[0]  # the list is a summary
    assert_envelope(await api.get("/api/webhooks/deliveries/whd_nope", key=key), 404, "DELIVERY_NOT_FOUND")

    # Tenant isolation: B neither sees nor redelivers A's deliveries.
    failed_one = sorted(failed_ids)[0]
    for path in (f"/api/webhooks/deliveries/{failed_one}", f"/api/webhooks/deliveries/{tests[0]['delivery_id']}"):
        assert_envelope(await api.get(path, key=b["sdk_key"]), 404, "DELIVERY_NOT_FOUND")
        assert_envelope(await api.post(path + "/redeliver", key=b["sdk_key"]), 404, "DELIVERY_NOT_FOUND")
    assert await listed("limit=100", b["sdk_key"]) == [b_test["delivery_id"]]
    resp = await api.post("/api/webhooks/redeliver-failed", key=b["sdk_key"], json={"since": before})
    assert resp.body == {"redelivered": 0}, resp
    assert set(await listed("status=failed")) == failed_ids

    # The operator: any tenant's deliveries, by tenant.
    adm = await api.get(f"/admin/webhooks/deliveries?tenant_id={a['tenant_id']}&limit=100", admin=True)
    assert adm.status == 200, adm
    assert [d["delivery_id"] for d in adm.body["data"]] == [d["delivery_id"] for d in everything]
    adm_b = await api.get(f"/admin/webhooks/deliveries?tenant_id={b['tenant_id']}&status=delivered", admin=True)
    assert [d["delivery_id"] for d in adm_b.body["data"]] == [b_test["delivery_id"]]
    adm_all = await api.get("/admin/webhooks/deliveries?limit=100", admin=True)
    assert {a["tenant_id"], b["tenant_id"]} <= {d["tenant_id"] for d in adm_all.body["data"]}
    adm_one = await api.get(f"/admin/webhooks/deliveries/{failed_one}", admin=True)
    assert adm_one.status == 200 and adm_one.body["tenant_id"] == a["tenant_id"]
    assert len(adm_one.body["attempt_log"]) == 7 and {x["status_code"] for x in adm_one.body["attempt_log"]} == {500}
    assert_envelope(await api.get("/admin/webhooks/deliveries/whd_nope", admin=True), 404, "DELIVERY_NOT_FOUND")
    # An SDK key never opens the admin API.
    assert_envelope(await api.get("/admin/webhooks/deliveries", key=key), 401, "MISSING_ADMIN_TOKEN")

    # The receiver recovers: the operator redelivers one, then everything failed for the tenant.
    rx.fail_types = set()
    red = await api.post(f"/admin/webhooks/deliveries/{failed_one}/redeliver", admin=True)
    assert red.status == 200 and red.body["delivery_id"] == failed_one, red
    await settled(api, key, failed_one, "delivered")
    rest = await api.post(
        "/admin/webhooks/redeliver-failed", admin=True, json={"since": before, "tenant_id": a["tenant_id"]}
    )
    assert rest.status == 200 and rest.body == {"redelivered": 1}, rest
    await settled(api, key, sorted(failed_ids)[1], "delivered")
    assert await listed("status=failed") == []
    assert_envelope(
        await api.post("/admin/webhooks/redeliver-failed", admin=True, json={"tenant_id": a["tenant_id"]}),
        400,
        "MISSING_PARAMETER",
    )


async def test_an_empty_tenant_id_is_refused_never_read_as_every_tenant(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    """Below the gateway, a request that names no tenant is refused; only an explicit
    `all_tenants` (the operator's API) reaches across tenants, and never together with a tenant."""
    rx = await receivers()
    t = await tenant_for(api, rx)
    d = await send_test(api, t["sdk_key"])
    await settled(api, t["sdk_key"], d["delivery_id"], "delivered")
    since = timestamp_pb2.Timestamp()
    since.FromDatetime(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    channel = grpcutil.channel(stack.env["INVO_WEBHOOKS_ADDR"])
    try:
        stub = webhooks_pb2_grpc.WebhooksServiceStub(channel)
        one = {"delivery_id": d["delivery_id"]}
        refused: list[tuple[Any, Any]] = [
            (stub.ListDeliveries, webhooks_pb2.ListDeliveriesRequest()),
            (stub.GetDelivery, webhooks_pb2.GetDeliveryRequest(**one)),
            (stub.Redeliver, webhooks_pb2.GetDeliveryRequest(**one)),
            (stub.RedeliverFailed, webhooks_pb2.RedeliverFailedRequest(since=since)),
            (stub.SendTestEvent, webhooks_pb2.SendTestEventRequest()),
            # Both a tenant and every tenant: ambiguous, so refused too.
            (stub.ListDeliveries, webhooks_pb2.ListDeliveriesRequest(tenant_id=t["tenant_id"], all_tenants=True)),
            (stub.GetDelivery, webhooks_pb2.GetDeliveryRequest(tenant_id=t["tenant_id"], all_tenants=True, **one)),
            (
                stub.RedeliverFailed,
                webhooks_pb2.RedeliverFailedRequest(tenant_id=t["tenant_id"], all_tenants=True, since=since),
            ),
        ]
        for method, request in refused:
            with pytest.raises(errors.InvalidRequest):
                await grpcutil.call(method, request, timeout_s=5)
        # Nothing was redelivered by the refused Redeliver: one attempt, as before.
        assert len(rx.of(d["event_id"])) == 1
        # Explicitly across tenants, as the operator's API asks: found.
        got = await grpcutil.call(
            stub.GetDelivery, webhooks_pb2.GetDeliveryRequest(all_tenants=True, **one), timeout_s=5
        )
        assert (got.tenant_id, got.status) == (t["tenant_id"], "delivered")
        listed = await grpcutil.call(
            stub.ListDeliveries, webhooks_pb2.ListDeliveriesRequest(all_tenants=True, limit=100), timeout_s=5
        )
        assert d["delivery_id"] in {x.delivery_id for x in listed.deliveries}
        # And another tenant's id finds nothing.
        other = await api.create_tenant()
        with pytest.raises(errors.NotFound):
            await grpcutil.call(
                stub.GetDelivery, webhooks_pb2.GetDeliveryRequest(tenant_id=other["tenant_id"], **one), timeout_s=5
            )
    finally:
        await channel.close()


async def test_bad_input_and_a_tenant_without_a_webhook_url(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    assert_envelope(await api.post("/api/webhooks/test", key=key), 400, "NO_WEBHOOK_URL")
    assert (await api.get("/api/webhooks/deliveries", key=key)).body == {
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }
    for query in (
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "limit=",
        "status=done",
        "status=PENDING",
    ):
        resp = await api.get(f"/api/webhooks/deliveries?{query}", key=key)
        assert_envelope(resp, 400, "INVALID_PARAMETER")
        assert resp.body["param"] == query.split("=")[0], resp
    for body, code in [
        ({}, "MISSING_PARAMETER"),
        ({"since": "not a time"}, "INVALID_PARAMETER"),
        ({"since": 12}, "INVALID_PARAMETER"),
        ({"since": now_iso(), "tenant_id": "tn_other"}, "UNKNOWN_FIELD"),
    ]:
        assert_envelope(await api.post("/api/webhooks/redeliver-failed", key=key, json=body), 400, code)
    assert (await api.get("/api/webhooks/deliveries")).status == 401


async def test_a_time_out_of_range_is_400_not_500(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    for query in ("since=0001-01-01T00:00:00%2B05:00", "until=9999-12-31T23:59:59-05:00"):
        assert_envelope(await api.get(f"/api/webhooks/deliveries?{query}", key=key), 400, "INVALID_PARAMETER")
    for since in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        resp = await api.post("/api/webhooks/redeliver-failed", key=key, json={"since": since})
        assert_envelope(resp, 400, "INVALID_PARAMETER")


async def test_a_nul_character_is_refused_not_500(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    # The gateway refuses NUL anywhere in a URL or a JSON body: PostgreSQL text cannot hold it.
    for query in ("cursor=%00", "event_type=a%00b"):
        assert_envelope(await api.get(f"/api/webhooks/deliveries?{query}", key=key), 400, "INVALID_REQUEST")
    assert_envelope(await api.get("/api/webhooks/deliveries/whd_%00", key=key), 400, "INVALID_REQUEST")
    assert_envelope(await api.post("/api/webhooks/deliveries/whd_%00/redeliver", key=key), 400, "INVALID_REQUEST")
    resp = await api.post(
        "/api/item-purchases/purchase-item",
        key=key,
        json={"player_email": "a@b.co", "item_id": "x\u0000y", "item_name": "n", "price": "1", "idempotency_key": "k"},
    )
    assert_envelope(resp, 400, "INVALID_JSON")


# -- a malformed event on the stream ----------------------------------------------------------


async def test_a_malformed_event_on_the_stream_is_dropped_and_delivery_goes_on(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    prefix = stack.env.get("INVO_NATS_SUBJECT_PREFIX", "invo.events")
    stream = stack.env.get("INVO_NATS_STREAM", "INVO_EVENTS")
    proc = stack.procs["webhooks"]
    nc = await nats.connect(stack.env["INVO_NATS_URL"])
    js = nc.jetstream()
    seq = None
    try:
        # A producer with a bug publishes something that is not an envelope.
        seq = (await js.publish(f"{prefix}.{t['tenant_id']}.broken", b"not json")).seq
        await credit(api, t["tenant_id"])  # a real event after it

        async def delivered_or_dead() -> bool:
            return bool(rx.answered()) or proc.poll() is not None

        await eventually(delivered_or_dead, timeout_s=15)
        assert proc.poll() is None, f"the webhooks service exited with {proc.returncode}"
        assert [c.event["event_type"] for c in rx.calls] == ["balance.adjusted"]
    finally:
        # Leave the stream and the network as they were for the tests after this one.
        if seq is not None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_msg(stream, seq)
        await nc.close()
        if stack.procs["webhooks"].poll() is not None:
            await asyncio.get_running_loop().run_in_executor(
                RESTARTER, functools.partial(stack.restart, "webhooks", sig=signal.SIGTERM)
            )
