"""The ACH simulator as a process of our own (`python -m devstack.ach_sim`, as the stack runs it),
its webhooks posted to a receiver of our own in the test.

Every webhook is verified as the gateway must verify it (hex HMAC-SHA256 of the raw body under
the first of INVO_ACH_WEBHOOK_KEYS, compared with `hmac.compare_digest`; the SDK's own check
agrees), is retried with the same X-Webhook-ID until it is taken, and carries the order as of its
event. A restart (SIGTERM, or SIGKILL mid-run) keeps the orders, the idempotency keys, the pending
moves (those that fell due meanwhile happen at once) and the webhooks still owed. The `/_sim/`
controls move orders on, return them, fail or hold API calls, hold and release webhooks. After
each test, neither the process's log (at DEBUG) nor its journal holds an account number.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from modern_treasury import APITimeoutError, AsyncModernTreasury, InternalServerError, UnprocessableEntityError

from devstack.devservers import free_port
from devstack.stack import ROOT
from tests.helpers import eventually
from tests.test_ach_sim import (
    COMPLETES,
    SECRET_NUMBER,
    USED_NUMBERS,
    assert_no_account_numbers,
    assert_whole,
    control,
    order_params,
    receiving_account,
    settled,
)

ORG = str(uuid.uuid4())
API_KEY = "test-sim-process-key"
KEYS = ("whk-new-signing-key", "whk-old-key")  # a rotation: the first signs
ORIGINATING = str(uuid.uuid4())
START_TIMEOUT_S = 20.0


class Receiver:
    """The webhook endpoint: checks each signature, refuses `refuse` more attempts per webhook
    (503), then keeps it."""

    def __init__(self) -> None:
        self.refuse = 0
        self.attempts: collections.Counter[str] = collections.Counter()
        self.taken: list[dict[str, Any]] = []
        self.wrong: list[str] = []  # what was wrong with a webhook (none may be)
        self.sdk = AsyncModernTreasury(organization_id=ORG, api_key=API_KEY, webhook_key=KEYS[0])

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = hmac.new(KEYS[0].encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Signature", "")):
            self.wrong.append("signature")
            return web.Response(status=400)
        if not self.sdk.webhooks.validate_signature(raw.decode(), request.headers):  # the SDK agrees
            self.wrong.append("the SDK's check")
        body = json.loads(raw)
        if set(body) != {"event", "data"} or request.content_type != "application/json":
            self.wrong.append(f"shape: {sorted(body)} {request.content_type}")
        webhook_id = request.headers["X-Webhook-ID"]
        self.attempts[webhook_id] += 1
        if self.attempts[webhook_id] <= self.refuse:
            return web.Response(status=503)
        self.taken.append({"id": webhook_id, **body})
        return web.Response(text="ok")

    def events(self, order_id: str) -> list[str]:
        return [w["event"] for w in self.taken if w["data"]["id"] == order_id]


@dataclasses.dataclass
class Sim:
    tmp: pathlib.Path
    receiver: Receiver
    hook_url: str
    port: int = dataclasses.field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def files(self) -> list[pathlib.Path]:
        return [self.tmp / "ach_sim.log", self.tmp / "state.jsonl"]

    def client(self, **kw: Any) -> AsyncModernTreasury:
        return AsyncModernTreasury(organization_id=ORG, api_key=API_KEY, base_url=self.url, max_retries=0, **kw)

    async def start(self, settle_s: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INVO_")}
        env.update(
            INVO_ACH_SIM_LISTEN=f"127.0.0.1:{self.port}",
            INVO_ACH_ORGANIZATION_ID=ORG,
            INVO_ACH_API_KEY=API_KEY,
            INVO_ACH_WEBHOOK_KEYS=",".join(KEYS),
            INVO_ACH_ORIGINATING_ACCOUNT_ID=ORIGINATING,
            INVO_ACH_SIM_STATE=str(self.tmp / "state.jsonl"),
            INVO_ACH_SIM_WEBHOOK_URL=self.hook_url,
            INVO_ACH_SIM_SETTLE_DELAY_S=str(settle_s),
            INVO_LOG_LEVEL="DEBUG",
        )
        with open(self.tmp / "ach_sim.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "devstack.ach_sim"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        async with self.client() as client:

            async def up() -> bool:
                assert self.proc is not None and self.proc.poll() is None, (self.tmp / "ach_sim.log").read_text()
                with contextlib.suppress(Exception):
                    return (await client.ping()).ping == "pong"
                return False

            await eventually(up, timeout_s=START_TIMEOUT_S)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            code = await asyncio.to_thread(self.proc.wait, 20)
            assert code in (0, -signal.SIGKILL), (self.tmp / "ach_sim.log").read_text()
        self.proc = None


@pytest.fixture
async def sim(tmp_path: pathlib.Path) -> AsyncIterator[Sim]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/webhooks/ach", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    s = Sim(tmp_path, receiver, f"http://127.0.0.1:{port}/webhooks/ach")
    try:
        yield s
    finally:
        await s.stop()
        await runner.cleanup()
        await receiver.sdk.close()
    assert receiver.wrong == []
    assert_no_account_numbers(s.files, USED_NUMBERS | {SECRET_NUMBER})


# -- webhooks -------------------------------------------------------------------------------------


async def test_each_move_sends_a_signed_webhook_retried_with_its_id_until_taken(sim: Sim) -> None:
    await sim.start(settle_s=0.2)
    sim.receiver.refuse = 2  # each webhook: two 503s, then taken
    async with sim.client() as mt:
        po = await mt.payment_orders.create(**order_params(ORIGINATING), idempotency_key="k1")
        await settled(mt, po.id, "completed")

    async def all_taken() -> bool:
        return len(sim.receiver.events(po.id)) == 3

    await eventually(all_taken)
    taken = [w for w in sim.receiver.taken if w["data"]["id"] == po.id]
    by_event = {w["event"]: w for w in taken}
    assert {e: w["data"]["status"] for e, w in by_event.items()} == {
        "begin_processing": "processing",
        "finish_processing": "sent",
        "completed": "completed",
    }
    assert len({w["id"] for w in taken}) == 3 and all(sim.receiver.attempts[w["id"]] == 3 for w in taken)
    completed = by_event["completed"]["data"]
    assert completed["reconciliation_status"] == "reconciled" and completed["transaction_ids"]
    assert_whole(completed, COMPLETES)
    _, listed = await control(sim.url, f"webhooks?payment_order_id={po.id}", get=True)
    first = by_event["begin_processing"]["id"]
    assert [a["status"] for a in listed["attempts"] if a["id"] == first] == [503, 503, 200]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_a_restart_keeps_orders_keys_pending_moves_and_owed_webhooks(sim: Sim, sig: int) -> None:
    settle_s = 1.5
    await sim.start(settle_s=settle_s)
    sim.receiver.refuse = 10**6  # the gateway is down: every webhook stays owed
    async with sim.client() as mt:
        moved = await mt.payment_orders.create(**order_params(ORIGINATING), idempotency_key="key-moved")
        await control(sim.url, "advance", payment_order_id=moved.id)  # -> processing, webhook owed
        waiting = await mt.payment_orders.create(**order_params(ORIGINATING, "10001"), idempotency_key="key-waiting")

    async def tried() -> bool:
        return bool(sim.receiver.attempts)

    await eventually(tried)
    owed_id = next(iter(sim.receiver.attempts))
    await sim.stop(sig)
    kinds = {json.loads(line)["k"] for line in (sim.tmp / "state.jsonl").read_text().splitlines()}
    assert kinds == {"orders", "transitions", "idempotency", "events"}
    await asyncio.sleep(settle_s)  # the waiting order's first move falls due while it is down
    sim.receiver.refuse = 0
    await sim.start(settle_s=settle_s)
    restarted = time.monotonic()
    async with sim.client() as mt:
        # Both orders' next moves fell due while it was down: made at once, the next ones a delay away.
        assert (await mt.payment_orders.retrieve(moved.id)).status == "sent"
        assert (await mt.payment_orders.retrieve(waiting.id)).status == "processing"
        params = order_params(ORIGINATING)
        assert (await mt.payment_orders.create(**params, idempotency_key="key-moved")).id == moved.id
        assert (await mt.payment_orders.create(**params, idempotency_key="key-waiting")).id == waiting.id

        async def delivered() -> bool:
            return len(sim.receiver.events(waiting.id)) == 1 and len(sim.receiver.events(moved.id)) == 2

        await eventually(delivered)
        assert time.monotonic() - restarted < settle_s  # the overdue moves happened at once
        assert sim.receiver.events(waiting.id) == ["begin_processing"]
        by_event = {w["event"]: w for w in sim.receiver.taken if w["data"]["id"] == moved.id}
        assert by_event["begin_processing"]["id"] == owed_id  # the owed webhook, sent again as it was
        assert by_event["begin_processing"]["data"]["status"] == "processing"
        assert by_event["finish_processing"]["data"]["status"] == "sent"
        # And the rest of its life goes on, to its end: 10001 is returned R01.
        _, order = await control(sim.url, "advance", payment_order_id=waiting.id, to="end")
        assert (order["status"], order["current_return"]["code"]) == ("returned", "R01")
        assert len((await mt.payment_orders.list()).items) == 2


# -- controls -------------------------------------------------------------------------------------


async def test_controls_move_an_order_on_and_return_a_completed_one(sim: Sim) -> None:
    await sim.start(settle_s=60)  # nothing moves by itself
    async with sim.client() as mt:
        po = await mt.payment_orders.create(**order_params(ORIGINATING))
        status, order = await control(sim.url, "advance", payment_order_id=po.id)
        assert (status, order["status"]) == (200, "processing")
        status, order = await control(sim.url, "advance", payment_order_id=po.id, to="end")
        assert (status, order["status"]) == (200, "completed")
        assert (await control(sim.url, "advance", payment_order_id=po.id))[0] == 409  # it has ended
        fresh = await mt.payment_orders.create(**order_params(ORIGINATING))
        assert (await control(sim.url, "return", payment_order_id=fresh.id))[0] == 400  # not completed
        assert (await control(sim.url, "return", payment_order_id=po.id, code="R99"))[0] == 400
        assert (await control(sim.url, "return", payment_order_id="po_nope"))[0] == 404
        status, order = await control(sim.url, "return", payment_order_id=po.id, code="R16")
        assert (status, order["current_return"]["code"]) == (200, "R16")
        returned = await mt.payment_orders.retrieve(po.id)
        assert returned.status == "returned" and returned.current_return is not None
        assert returned.current_return.reason == "Account Frozen/Entry Returned per OFAC Instruction"

        async def all_taken() -> bool:
            return len(sim.receiver.events(po.id)) == 4

        await eventually(all_taken)
        assert sorted(sim.receiver.events(po.id)) == ["begin_processing", "completed", "finish_processing", "returned"]
        # A refused request (its number in the DEBUG log? never) changes nothing.
        bad = order_params(ORIGINATING, receiving_account=receiving_account(SECRET_NUMBER, routing="123456789"))
        with pytest.raises(UnprocessableEntityError):
            await mt.payment_orders.create(**bad)
        _, state = await control(sim.url, "state", get=True)
        assert (state["orders"], state["pending_moves"]) == (2, 1)


async def test_faults_fail_or_hold_api_calls_and_a_retry_with_the_key_pays_once(sim: Sim) -> None:
    await sim.start(settle_s=60)
    async with sim.client() as mt:
        _, faults = await control(sim.url, "faults", fail_next=2, match="POST /api/payment_orders")
        assert faults["fail_next"] == 2
        params = order_params(ORIGINATING)
        for _ in range(2):
            with pytest.raises(InternalServerError) as failed:
                await mt.payment_orders.create(**params, idempotency_key="once")
            assert failed.value.status_code == 503
        assert (await mt.payment_orders.list(metadata=params["metadata"])).items == []
        assert (await mt.ping()).ping == "pong"  # only the matching calls failed
        made = await mt.payment_orders.create(**params, idempotency_key="once")

        # Held before it runs: the caller times out, the order is made later; the retry replays it.
        await control(sim.url, "faults", hold_next=1, hold_s=1.0)
        held = order_params(ORIGINATING)
        with pytest.raises(APITimeoutError):
            await mt.payment_orders.create(**held, idempotency_key="held", timeout=0.3)
        assert (await mt.payment_orders.list(metadata=held["metadata"])).items == []

        async def made_later() -> list[Any]:
            return (await mt.payment_orders.list(metadata=held["metadata"])).items

        [later] = await eventually(made_later)
        assert (await mt.payment_orders.create(**held, idempotency_key="held")).id == later.id

        # Run at once but answered late (a lost answer): the order exists before the answer.
        await control(sim.url, "faults", slow_next=1, slow_s=1.0)
        slow = order_params(ORIGINATING)
        with pytest.raises(APITimeoutError):
            await mt.payment_orders.create(**slow, idempotency_key="slow", timeout=0.3)
        [lost] = (await mt.payment_orders.list(metadata=slow["metadata"])).items
        assert (await mt.payment_orders.create(**slow, idempotency_key="slow")).id == lost.id
        assert len((await mt.payment_orders.list()).items) == 3 and made.id != lost.id
        _, state = await control(sim.url, "state", get=True)
        assert [c for c in state["calls"] if c[2] == 503] == [["POST", "/api/payment_orders", 503]] * 2


async def test_held_webhooks_are_released_newest_first(sim: Sim) -> None:
    await sim.start(settle_s=60)
    await control(sim.url, "faults", webhook_hold=True)
    async with sim.client() as mt:
        po = await mt.payment_orders.create(**order_params(ORIGINATING))
    await control(sim.url, "advance", payment_order_id=po.id, to="end")
    _, listed = await control(sim.url, f"webhooks?payment_order_id={po.id}", get=True)
    assert (listed["held"], [w["event"] for w in listed["webhooks"]]) == (
        3,
        ["begin_processing", "finish_processing", "completed"],
    )
    await asyncio.sleep(0.2)
    assert sim.receiver.taken == []
    assert await control(sim.url, "release_webhooks") == (200, {"released": 3})

    async def all_taken() -> bool:
        return len(sim.receiver.events(po.id)) == 3

    await eventually(all_taken)
    assert sim.receiver.events(po.id) == ["completed", "finish_processing", "begin_processing"]
    assert await control(sim.url, "reset") == (200, {"ok": True})
    _, state = await control(sim.url, "state", get=True)
    assert state["faults"]["webhook_hold"] is False
