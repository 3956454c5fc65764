"""Payouts and the ACH provider (Modern Treasury through its SDK, the simulator in the stack): an
outage mid-approval, a lost answer, a lost webhook, and the provider's webhooks at
`POST /webhooks/ach` (signatures, duplicates, strangers, old news, a second key).

The proof that a payout was paid once is the simulator's own record: the payment orders it holds
for the payout (listed by `metadata[payout_id]` through the SDK) and the API calls it saw. Time is
not waited for: the sweep runs on demand through the payouts service's `Sweep` RPC (the code its
background loop runs), and a poll falls due by moving `polled_at` into the past. After each test,
the ledger check is clean.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import uuid
from typing import Any

import aiohttp
import asyncpg
from invo.v1 import payouts_pb2, payouts_pb2_grpc
from modern_treasury import AsyncModernTreasury

from devstack.stack import Stack
from services.common import grpcutil
from services.common.config import Settings
from tests import payouts_support as ps
from tests.helpers import Api, Response, assert_envelope, eventually

CREATE = ("POST", "/api/payment_orders")


# -- the simulator, the payouts service and its schema ----------------------------------------


class AchSim:
    """The ACH simulator's test controls, and its API through Modern Treasury's SDK."""

    def __init__(self, stack: Stack) -> None:
        self.base = stack.env["INVO_ACH_API_BASE"]
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.sdk = AsyncModernTreasury(
            organization_id=stack.env["INVO_ACH_ORGANIZATION_ID"],
            api_key=stack.env["INVO_ACH_API_KEY"],
            base_url=self.base,
            max_retries=0,
        )

    async def close(self) -> None:
        await self.session.close()
        await self.sdk.close()

    async def control(self, action: str, body: dict[str, Any] | None = None) -> Any:
        async with self.session.post(f"{self.base}/_sim/{action}", json=body or {}) as resp:
            assert resp.status == 200, (action, resp.status, await resp.text())
            return await resp.json()

    async def get(self, action: str) -> Any:
        async with self.session.get(f"{self.base}/_sim/{action}") as resp:
            assert resp.status == 200, (action, resp.status)
            return await resp.json()

    async def calls(self) -> collections.Counter[tuple[str, str, int]]:
        return collections.Counter((m, p, s) for m, p, s in (await self.get("state"))["calls"])

    async def orders_of(self, payout_id: str) -> list[dict[str, Any]]:
        page = await self.sdk.payment_orders.list(metadata={"payout_id": payout_id}, per_page=10)
        return [po.to_dict() for po in page.items]

    async def order_status(self, order_id: str) -> str:
        return str((await self.sdk.payment_orders.retrieve(order_id)).status)

    async def webhooks(self, order_id: str) -> dict[str, Any]:
        return dict(await self.get(f"webhooks?payment_order_id={order_id}"))


async def sim_of(stack: Stack) -> AchSim:
    sim = AchSim(stack)
    await sim.control("reset")
    return sim


async def sweep(stack: Stack) -> payouts_pb2.PayoutSweepResponse:
    """One round of the payouts service's sweep (dispatch, ledger catch-up, polls)."""
    channel = grpcutil.channel(stack.env["INVO_PAYOUTS_ADDR"])
    try:
        stub = payouts_pb2_grpc.PayoutsServiceStub(channel)
        resp: payouts_pb2.PayoutSweepResponse = await grpcutil.call(
            stub.Sweep, payouts_pb2.PayoutSweepRequest(), timeout_s=60
        )
        return resp
    finally:
        await channel.close()


async def sql(stack: Stack, service: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """`query` in `service`'s schema ({schema} in it names the schema)."""
    schema = Settings.from_env(stack.env).schema(service)
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        return list(await conn.fetch(query.format(schema=f'"{schema}"'), *args))
    finally:
        await conn.close()


async def ledger_writes(stack: Stack, tenant_id: str) -> tuple[int, int, list[str]]:
    """The tenant's ledger: (transactions, entries, the status of each payout transaction)."""
    txns = await sql(
        stack, "ledger", "SELECT id, kind, status FROM {schema}.transactions WHERE tenant_id = $1", tenant_id
    )
    entries = await sql(stack, "ledger", "SELECT count(*) AS n FROM {schema}.entries WHERE tenant_id = $1", tenant_id)
    return len(txns), int(entries[0]["n"]), sorted(f"{t['kind']}:{t['status']}" for t in txns if "payout" in t["kind"])


async def payout_row(stack: Stack, payout_id: str) -> asyncpg.Record:
    rows = await sql(stack, "payouts", "SELECT * FROM {schema}.payouts WHERE payout_id = $1", payout_id)
    assert len(rows) == 1
    return rows[0]


async def approved_payout(api: Api, usd: str = "12.34") -> tuple[dict[str, Any], str, Response]:
    """A new earning tenant, a payout asked for and approved: (tenant, payout_id, the approval)."""
    t = await ps.earning_tenant(api, "1000")
    asked = await ps.request(api, t, usd)
    assert asked.status == 201, asked
    approval = await ps.approve(api, asked.body["payout_id"])
    assert approval.status == 200, approval
    return t, asked.body["payout_id"], approval


async def completed_once(api: Api, sim: AchSim, stack: Stack, t: dict[str, Any], payout_id: str) -> dict[str, Any]:
    """The payout completed through exactly one payment order, each state once."""
    done = await ps.reaches(api, t, payout_id, "completed", timeout_s=30)
    orders = await sim.orders_of(payout_id)
    assert [(o["status"], o["amount"]) for o in orders] == [("completed", done_cents(done))], orders
    view = (await api.get(f"/admin/payouts/{payout_id}", admin=True)).body
    assert view["provider_payment_order_id"] == orders[0]["id"]
    assert [(h["from"], h["to"]) for h in done["history"]] == [
        (None, "requested"),
        ("requested", "approved"),
        ("approved", "processing"),
        ("processing", "completed"),
    ]
    events = await ps.status_events(stack, t["tenant_id"], payout_id, 4)
    assert [e["data"]["to"] for e in events] == ["requested", "approved", "processing", "completed"]
    return done


def breaker_openings(stack: Stack) -> int:
    """How often the payouts service's ACH circuit breaker has opened (its log, appended to)."""
    log = stack.logs / "payouts.log"
    return log.read_text(errors="replace").count("ach circuit breaker opens") if log.exists() else 0


def done_cents(p: dict[str, Any]) -> int:
    return int(p["usd_amount"].replace(".", ""))


async def assert_paid(api: Api, t: dict[str, Any], owed: str, paid: str) -> None:
    await ps.revenue_reaches(api, t, owed=owed, held="0.00", paid_out=paid)


# -- outages and lost answers -----------------------------------------------------------------


async def test_a_provider_outage_mid_approval_leaves_it_approved_then_it_is_paid_once(api: Api, stack: Stack) -> None:
    sim = await sim_of(stack)
    opened = breaker_openings(stack)
    try:
        before = await sim.calls()
        # The provider's payment orders fail (creates and searches alike) six times: the approval's
        # create, then the sweep's attempts until the breaker opens, and its probe once it cools down.
        await sim.control("faults", {"fail_next": 6, "match": "/api/payment_orders"})
        t, pid, approval = await approved_payout(api)
        p = approval.body
        assert (p["status"], p["provider_payment_order_id"], p["approved_at"] is not None) == ("approved", None, True)
        assert [(h["from"], h["to"]) for h in p["history"]] == [(None, "requested"), ("requested", "approved")]
        assert (await ps.revenue(api, t))["held_usd"] == "12.34"

        async def sent() -> bool:
            await sweep(stack)
            return (await ps.payout(api, t, pid))["status"] != "approved"

        await eventually(sent, timeout_s=30, interval_s=0.3)
        assert (await sim.get("state"))["faults"]["fail_next"] == 0
        done = await completed_once(api, sim, stack, t, pid)
        assert done["history"][2]["source"] in ("sweep", "provider")  # not by the approval
        calls = await sim.calls() - before
        assert calls[(*CREATE, 201)] == 1, calls  # one order made, with the payout's key
        assert calls[(*CREATE, 503)] + calls[("GET", "/api/payment_orders", 503)] == 6, calls
        await assert_paid(api, t, "77.66", "12.34")
        assert breaker_openings(stack) > opened  # the outage went through the circuit breaker
    finally:
        await sim.control("reset")
        await sim.close()
    await ps.check_ledger(api)


async def test_a_lost_answer_of_the_provider_still_makes_one_payment_order(api: Api, stack: Stack) -> None:
    """The payouts service gives up on the provider after 1 s here: the create is held 3 s (made
    only after the service gave up, a retry meanwhile refused as in flight), or made at once and
    answered 3 s later. Either way the service does not learn the order's id from its answer."""
    before_env = dict(stack.process_env.get("payouts", {}))
    stack.set_process_env("payouts", {**before_env, "INVO_ACH_TIMEOUT_S": "1"})
    await asyncio.to_thread(stack.restart, "payouts")
    sim = await sim_of(stack)
    try:
        for fault in ({"hold_next": 1, "hold_s": 3}, {"slow_next": 1, "slow_s": 3}):
            before = await sim.calls()
            await sim.control("faults", {**fault, "match": "POST /api/payment_orders"})
            t, pid, approval = await approved_payout(api)
            if "hold_next" in fault:  # the order does not exist yet: nothing can have moved it
                assert approval.body["status"] == "approved", approval
                assert approval.body["provider_payment_order_id"] is None

            async def settled(t: dict[str, Any] = t, pid: str = pid) -> bool:
                await sweep(stack)
                return (await ps.payout(api, t, pid))["status"] == "completed"

            await eventually(settled, timeout_s=30, interval_s=0.3)
            await completed_once(api, sim, stack, t, pid)

            async def answered(before: collections.Counter[tuple[str, str, int]] = before) -> Any:
                calls = await sim.calls() - before  # a late answer is recorded once it is sent
                return calls if calls[(*CREATE, 201)] else None

            calls = await eventually(answered, timeout_s=10, interval_s=0.1)
            assert calls[(*CREATE, 201)] == 1, (fault, calls)
            await assert_paid(api, t, "77.66", "12.34")
    finally:
        await sim.control("reset")
        await sim.close()
        stack.set_process_env("payouts", before_env)
        await asyncio.to_thread(stack.restart, "payouts")
    await ps.check_ledger(api)


async def test_a_lost_webhook_is_made_up_by_the_poll_and_its_late_arrival_changes_nothing(
    api: Api, stack: Stack
) -> None:
    sim = await sim_of(stack)
    try:
        await sim.control("faults", {"webhook_hold": True})
        t, pid, _ = await approved_payout(api)
        order_id = (await payout_row(stack, pid))["provider_order_id"]
        assert order_id and (await ps.payout(api, t, pid))["status"] == "processing"

        async def bank_done() -> bool:
            return await sim.order_status(order_id) == "completed"

        await eventually(bank_done, timeout_s=15, interval_s=0.1)
        assert (await ps.payout(api, t, pid))["status"] == "processing"  # no webhook came
        # The poll falls due (it asks every 30 s): the sweep asks the provider and completes it.
        await sql(
            stack,
            "payouts",
            "UPDATE {schema}.payouts SET polled_at = now() - interval '60 s' WHERE payout_id = $1",
            pid,
        )
        assert (await sweep(stack)).polled >= 1
        done = await completed_once(api, sim, stack, t, pid)
        assert done["history"][-1]["source"] == "sweep"
        settle_txn = (await payout_row(stack, pid))["settle_transaction_id"]
        ledger = await ledger_writes(stack, t["tenant_id"])
        assert ledger[2] == ["payout_hold:posted"], ledger

        # The held webhooks arrive at last (newest first): each is applied, none changes anything.
        await sim.control("faults", {"webhook_hold": False})
        held = [w["id"] for w in (await sim.webhooks(order_id))["webhooks"]]
        assert (await sim.control("release_webhooks"))["released"] == len(held) == 3

        async def delivered() -> bool:
            attempts = (await sim.webhooks(order_id))["attempts"]
            return {a["id"] for a in attempts if a["status"] == 200} == set(held)

        await eventually(delivered, timeout_s=15, interval_s=0.1)
        stored = await sql(
            stack,
            "payouts",
            "SELECT webhook_id, applied_at FROM {schema}.provider_events WHERE order_id = $1",
            order_id,
        )
        assert {r["webhook_id"] for r in stored} == set(held) and all(r["applied_at"] for r in stored), stored
        assert (await ps.payout(api, t, pid))["history"] == done["history"]
        assert (await payout_row(stack, pid))["settle_transaction_id"] == settle_txn
        assert await ledger_writes(stack, t["tenant_id"]) == ledger
        events = await ps.status_events(stack, t["tenant_id"], pid, 4)
        assert len(events) == 4, events
        await assert_paid(api, t, "77.66", "12.34")
    finally:
        await sim.control("reset")
        await sim.close()
    await ps.check_ledger(api)


# -- webhooks at POST /webhooks/ach -----------------------------------------------------------


def sign(raw: bytes, key: str) -> str:
    return hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()


def first_key(stack: Stack) -> str:
    return stack.env["INVO_ACH_WEBHOOK_KEYS"].split(",")[0].strip()


def payload(event: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"event": event, "data": data}, separators=(",", ":")).encode()


async def deliver(
    api: Api, raw: bytes, *, key: str | None, webhook_id: str | None = None, signature: str | None = None
) -> Response:
    headers = {"Content-Type": "application/json"}
    if key is not None or signature is not None:
        headers["X-Signature"] = signature if signature is not None else sign(raw, key or "")
    if webhook_id is not None:
        headers["X-Webhook-ID"] = webhook_id
    return await api.post("/webhooks/ach", data=raw, headers=headers)


def stranger(**metadata: str) -> dict[str, Any]:
    """A payment order that is not one of ours."""
    return {"id": str(uuid.uuid4()), "status": "completed", "amount": 500, "metadata": metadata}


async def sim_webhooks(sim: AchSim, order_id: str, count: int) -> dict[str, dict[str, Any]]:
    """The simulator's webhooks for an order by event name, once there are `count`."""

    async def made() -> list[dict[str, Any]]:
        found = (await sim.webhooks(order_id))["webhooks"]
        return found if len(found) >= count else []

    return {w["event"]: w for w in await eventually(made, timeout_s=15, interval_s=0.1)}


async def test_a_webhook_without_a_valid_signature_or_shape_is_refused(api: Api, stack: Stack) -> None:
    key = first_key(stack)
    raw = payload("completed", stranger())
    wid = f"wh-{uuid.uuid4()}"
    assert_envelope(await deliver(api, raw, key=None, webhook_id=wid), 400, "INVALID_SIGNATURE")
    assert_envelope(await deliver(api, raw, key="not-the-key", webhook_id=wid), 400, "INVALID_SIGNATURE")
    assert_envelope(await deliver(api, raw, key=key.upper() + "x", webhook_id=wid), 400, "INVALID_SIGNATURE")
    tampered = sign(payload("completed", stranger()), key)
    assert_envelope(await deliver(api, raw, key=None, webhook_id=wid, signature=tampered), 400, "INVALID_SIGNATURE")
    assert_envelope(await deliver(api, raw, key=None, webhook_id=wid, signature="zz" * 32), 400, "INVALID_SIGNATURE")
    assert_envelope(await deliver(api, raw, key=key), 400, "INVALID_SIGNATURE")  # no X-Webhook-ID
    for bad in (b"not json", b"[]", b'{"event": "completed"}', b'{"event": 7, "data": {}}', b'{"data": {}}'):
        assert_envelope(await deliver(api, bad, key=key, webhook_id=f"wh-{uuid.uuid4()}"), 400, "INVALID_EVENT")
    no_id = payload("completed", {"status": "completed", "amount": 500})
    assert_envelope(await deliver(api, no_id, key=key, webhook_id=f"wh-{uuid.uuid4()}"), 400, "INVALID_EVENT")
    assert await sql(stack, "payouts", "SELECT 1 FROM {schema}.provider_events WHERE webhook_id = $1", wid) == []

    # An order that is not ours: kept and acknowledged, ignored; again, a duplicate.
    for data in (stranger(), stranger(payout_id="po_" + "0" * 26)):
        one, wid = payload("completed", data), f"wh-{uuid.uuid4()}"
        first = await deliver(api, one, key=key, webhook_id=wid)
        assert (first.status, first.body) == (200, {"received": True, "duplicate": False, "ignored": True}), first
        again = await deliver(api, one, key=key, webhook_id=wid)
        assert (again.status, again.body) == (200, {"received": True, "duplicate": True, "ignored": True}), again
        kept = await sql(
            stack, "payouts", "SELECT payout_id, order_id FROM {schema}.provider_events WHERE webhook_id = $1", wid
        )
        assert [(r["payout_id"], r["order_id"]) for r in kept] == [(None, data["id"])]
    await ps.check_ledger(api)


async def test_a_webhook_applies_once_and_an_older_state_changes_nothing(api: Api, stack: Stack) -> None:
    key = first_key(stack)
    sim = await sim_of(stack)
    try:
        await sim.control("faults", {"webhook_hold": True})  # the test delivers them itself
        t, pid, _ = await approved_payout(api)
        order_id = (await payout_row(stack, pid))["provider_order_id"]
        hooks = await sim_webhooks(sim, order_id, 3)
        assert set(hooks) == {"begin_processing", "finish_processing", "completed"}
        assert (await ps.payout(api, t, pid))["status"] == "processing"

        done_hook = hooks["completed"]
        raw = payload(done_hook["event"], done_hook["data"])
        first = await deliver(api, raw, key=key, webhook_id=done_hook["id"])
        assert (first.status, first.body) == (200, {"received": True, "duplicate": False, "ignored": False}), first
        done = await completed_once(api, sim, stack, t, pid)
        assert done["history"][-1]["source"] == "provider"
        ledger = await ledger_writes(stack, t["tenant_id"])
        assert ledger[2] == ["payout_hold:posted"], ledger

        again = await deliver(api, raw, key=key, webhook_id=done_hook["id"])
        assert (again.status, again.body) == (200, {"received": True, "duplicate": True, "ignored": False}), again
        # Older news after the newer: processing, then sent, after completed.
        for name in ("begin_processing", "finish_processing"):
            old = hooks[name]
            late = await deliver(api, payload(old["event"], old["data"]), key=key, webhook_id=old["id"])
            assert (late.status, late.body) == (200, {"received": True, "duplicate": False, "ignored": False}), late
        assert (await ps.payout(api, t, pid))["history"] == done["history"]
        assert await ledger_writes(stack, t["tenant_id"]) == ledger
        assert len(await ps.status_events(stack, t["tenant_id"], pid, 4)) == 4
        await assert_paid(api, t, "77.66", "12.34")
        # Nor does the stored provider state go back: the order is completed at the provider.
        row = await payout_row(stack, pid)
        assert (row["status"], row["provider_status"]) == ("completed", "completed"), dict(row)
    finally:
        await sim.control("reset")
        await sim.close()
    await ps.check_ledger(api)


async def test_a_webhook_signed_with_a_second_listed_key_is_accepted(api: Api, stack: Stack) -> None:
    key, second = first_key(stack), f"whk-second-{uuid.uuid4().hex}"
    before_env = dict(stack.process_env.get("gateway", {}))
    stack.set_process_env("gateway", {**before_env, "INVO_ACH_WEBHOOK_KEYS": f"{key},{second}"})
    await asyncio.to_thread(stack.restart, "gateway")
    sim = await sim_of(stack)
    try:
        async with Api(stack.gateway_url, admin_token=stack.env["INVO_ADMIN_TOKEN"]) as fresh:
            ack = await deliver(fresh, payload("completed", stranger()), key=second, webhook_id=f"wh-{uuid.uuid4()}")
            assert (ack.status, ack.body["ignored"]) == (200, True), ack
            unlisted = await deliver(fresh, payload("completed", stranger()), key="whk-unlisted", webhook_id="wh-x")
            assert_envelope(unlisted, 400, "INVALID_SIGNATURE")

            # A real order's webhook under the second key moves the payout.
            await sim.control("faults", {"webhook_hold": True})
            t, pid, _ = await approved_payout(fresh)
            order_id = (await payout_row(stack, pid))["provider_order_id"]
            done_hook = (await sim_webhooks(sim, order_id, 3))["completed"]
            applied = await deliver(
                fresh, payload(done_hook["event"], done_hook["data"]), key=second, webhook_id=done_hook["id"]
            )
            assert (applied.status, applied.body["ignored"], applied.body["duplicate"]) == (200, False, False), applied
            await completed_once(fresh, sim, stack, t, pid)
            await assert_paid(fresh, t, "77.66", "12.34")
    finally:
        await sim.control("reset")
        await sim.close()
        stack.set_process_env("gateway", before_env)
        await asyncio.to_thread(stack.restart, "gateway")
    async with Api(stack.gateway_url, admin_token=stack.env["INVO_ADMIN_TOKEN"]) as fresh:
        # Restored: the second key no longer verifies; the first still does.
        gone = await deliver(fresh, payload("completed", stranger()), key=second, webhook_id=f"wh-{uuid.uuid4()}")
        assert_envelope(gone, 400, "INVALID_SIGNATURE")
        still = await deliver(fresh, payload("completed", stranger()), key=key, webhook_id=f"wh-{uuid.uuid4()}")
        assert still.status == 200, still
        await ps.check_ledger(fresh)
