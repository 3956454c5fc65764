"""Payouts end to end through the gateway, against the session stack (the ACH simulator settling
every 0.3 s): the happy path with every payout.status_changed event and every provider webhook,
requests racing for the owed balance, and the idempotency key (twice, concurrently, with another
body, after a refusal). Ends other than `completed`, validation and reading are in
test_payouts_states.py, which shares the helpers here. After every test, the ledger check.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from devstack.stack import Stack
from tests import payouts_support as ps
from tests.helpers import Api, Response, assert_envelope, eventually
from tests.webhooks_support import Receiver, receivers, verify

__all__ = ["receivers"]  # the fixture: the partner's webhook endpoint

PAYOUT_ID = re.compile(r"^po_[0-9A-Z]{26}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SECRET = "987654321012"  # an account number sent only where it must never come back whole
TERMINAL_REASON = ("rejected", "cancelled", "failed", "returned")


# -- helpers (test_payouts_states.py uses them too) ----------------------------------------------


@pytest.fixture(autouse=True)
async def _ledger_checked(api: Api) -> AsyncIterator[None]:
    yield
    await ps.check_ledger(api)


async def earn(api: Api, t: dict[str, Any], units: str) -> None:
    """More revenue for the tenant: 90% of an item purchase of `units`."""
    player = f"buyer-{ps.key()[-8:]}@example.com"
    assert (await api.credit(t["tenant_id"], player, units)).status == 200
    bought = await api.post(
        "/api/item-purchases/purchase-item",
        key=t["sdk_key"],
        json={
            "player_email": player,
            "item_id": "pack",
            "item_name": "Pack",
            "price": units,
            "idempotency_key": ps.key(),
        },
    )
    assert bought.status == 200, bought


async def assert_revenue(
    api: Api, t: dict[str, Any], *, owed: str, held: str, paid_out: str, returned: str = "0.00", lifetime: str = "90.00"
) -> None:
    """GET /api/revenue, every figure in USD and in units ($0.10 a unit); available = owed - held.

    Awaited, not read once: a payout's ledger write follows the commit of its status by moments
    (services/payouts/moves.py), so right after a status is seen the figures may still be the old
    ones; they must reach these within the wait, or the assertion shows the last ones read."""
    usd = {
        "owed": owed,
        "held": held,
        "available": str(Decimal(owed) - Decimal(held)),
        "paid_out": paid_out,
        "returned": returned,
        "lifetime": lifetime,
    }
    rev = await ps.revenue_reaches(api, t, **usd)
    assert {k: rev[f"{k}_units"] for k in usd} == {k: str(int(Decimal(v) * 10)) for k, v in usd.items()}, rev


async def listed(api: Api, t: dict[str, Any], query: str = "") -> list[dict[str, Any]]:
    resp = await api.get(f"/api/payouts{query}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return list(resp.body["data"])


async def admin_view(api: Api, payout_id: str) -> dict[str, Any]:
    resp = await api.get(f"/admin/payouts/{payout_id}", admin=True)
    assert resp.status == 200, resp
    return dict(resp.body)


async def sim(stack: Stack, action: str, *, get: bool = False, **body: Any) -> Any:
    """One of the ACH simulator's test controls (`/_sim/<action>`): its JSON answer, which must be a 200."""
    url = f"{stack.env['INVO_ACH_API_BASE']}/_sim/{action}"
    async with aiohttp.ClientSession() as http:
        # A read takes its arguments as the query (payment_order_id=...), a control as its body.
        query = {k: str(v) for k, v in body.items()} if get else None
        async with http.request("GET" if get else "POST", url, params=query, json=None if get else body) as resp:
            answer = await resp.json()
            assert resp.status == 200, (action, resp.status, answer)
            return answer


@contextlib.asynccontextmanager
async def webhooks_held(stack: Stack) -> AsyncIterator[None]:
    """The simulator's webhooks held while inside (its orders move on), sent in order after."""
    await sim(stack, "faults", webhook_hold=True)
    try:
        yield
    finally:
        await sim(stack, "faults", webhook_hold=False)
        await sim(stack, "release_webhooks", order="sent")


def history(p: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    return [(h["from"], h["to"], h["source"]) for h in p["history"]]


async def assert_events(stack: Stack, t: dict[str, Any], p: dict[str, Any]) -> list[dict[str, Any]]:
    """One payout.status_changed per line of the payout's history, in order, each with the payout
    as of that move: its reason only from an end that has one, the return's code only on `returned`,
    `changed_at` the time of the line."""
    lines = p["history"]
    events = await ps.status_events(stack, t["tenant_id"], p["payout_id"], len(lines))
    assert len(events) == len(lines), [(e["data"]["from"], e["data"]["to"]) for e in events]
    assert {(e["event_type"], e["tenant_id"]) for e in events} == {("payout.status_changed", t["tenant_id"])}
    expected = [
        {
            "payout_id": p["payout_id"],
            "from": h["from"],
            "to": h["to"],
            "usd_amount": p["usd_amount"],
            "account_last4": p["bank_account"]["account_last4"],
            "account_type": p["bank_account"]["account_type"],
            "reason": p["reason"] if h["to"] in TERMINAL_REASON else None,
            "return_code": p["return_code"] if h["to"] == "returned" else None,
            "return_reason": p["return_reason"] if h["to"] == "returned" else None,
            "contact_email": p["contact_email"],
            "changed_at": h["at"],
        }
        for h in lines
    ]
    assert [e["data"] for e in events] == expected
    return events


def assert_requested(resp: Response, sent: dict[str, Any], *, status: int = 201) -> dict[str, Any]:
    """The answer to a new request (or its replay), exactly as the README shows it."""
    assert resp.status == status, resp
    p = dict(resp.body)
    assert PAYOUT_ID.match(p["payout_id"]) and TIME.match(p["created_at"]), p
    assert p == {
        "payout_id": p["payout_id"],
        "status": p["status"] if status == 200 else "requested",
        "usd_amount": sent["usd_amount"],
        "contact_email": sent["contact_email"],
        "bank_account": {
            "account_holder_name": sent["account_holder_name"],
            "routing_number": sent["routing_number"],
            "account_type": sent["account_type"],
            "account_last4": sent["account_number"][-4:],
        },
        "approvals_required": 1,
        "approvals_received": p["approvals_received"] if status == 200 else 0,
        "reason": None,
        "return_code": None,
        "return_reason": None,
        "created_at": p["created_at"],
        "updated_at": p["updated_at"] if status == 200 else p["created_at"],
        "approved_at": p["approved_at"] if status == 200 else None,
        "completed_at": p["completed_at"] if status == 200 else None,
        "ended_at": None,
        "history": p["history"]
        if status == 200
        else [{"from": None, "to": "requested", "source": "partner", "reason": "", "at": p["created_at"]}],
        "duplicate": status == 200,
    }
    assert sent["account_number"] not in str(p)
    return p


# -- the happy path -------------------------------------------------------------------------------


async def test_a_payout_requested_approved_processing_completed_with_every_event(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await ps.earning_tenant(api, "1000", webhook_url=rx.url, rate_limit_per_second=10_000)  # $90.00 owed
    checker = await ps.operator(api)
    sent = ps.body("25.00")
    p = assert_requested(await api.post("/api/payouts", key=t["sdk_key"], json=sent), sent)
    pid = p["payout_id"]
    await assert_revenue(api, t, owed="90.00", held="25.00", paid_out="0.00")
    assert [x["payout_id"] for x in await listed(api, t)] == [pid]

    async with webhooks_held(stack):
        approved = await ps.approve(api, pid, checker)
        assert approved.status == 200, approved
        a = approved.body
        me = checker["operator_id"]
        assert [x["operator_id"] for x in a["approvals"]] == [me]
        assert (a["approvals_received"], a["requested_by"], a["tenant_id"]) == (1, "partner", t["tenant_id"])
        assert a["history"][1] == {
            "from": "requested",
            "to": "approved",
            "source": f"operator:{me}",
            "reason": f"approved by {me}",
            "at": a["approved_at"],
        }
        # Approved, the payment order is made at once: processing, held still, nothing paid yet.
        await ps.reaches(api, t, pid, "processing")
        await assert_revenue(api, t, owed="90.00", held="25.00", paid_out="0.00")
        order_id = (await admin_view(api, pid))["provider_payment_order_id"]
        assert order_id

        async def moved_on() -> list[str]:
            made = (await sim(stack, "webhooks", get=True, payment_order_id=order_id))["webhooks"]
            names = [w["event"] for w in made]
            return names if len(names) == 3 else []

        # The order settles at the provider; with its webhooks held the payout waits for them.
        assert await eventually(moved_on) == ["begin_processing", "finish_processing", "completed"]
        assert (await ps.payout(api, t, pid))["status"] == "processing"

    done = await ps.reaches(api, t, pid, "completed")
    assert history(done) == [
        (None, "requested", "partner"),
        ("requested", "approved", f"operator:{me}"),
        ("approved", "processing", "provider"),
        ("processing", "completed", "provider"),
    ]
    assert done["completed_at"] and done["ended_at"] is None and done["reason"] is None
    await assert_revenue(api, t, owed="65.00", held="0.00", paid_out="25.00")

    # Each of the provider's webhooks was accepted by POST /webhooks/ach.
    async def delivered() -> list[dict[str, Any]]:
        seen = await sim(stack, "webhooks", get=True, payment_order_id=order_id)
        ok = {a["id"] for a in seen["attempts"] if a["status"] == 200}
        return seen["webhooks"] if {w["id"] for w in seen["webhooks"]} <= ok else []

    assert [w["data"]["status"] for w in await eventually(delivered)] == ["processing", "sent", "completed"]

    events = await assert_events(stack, t, done)
    assert [(e["data"]["from"], e["data"]["to"]) for e in events] == [
        (None, "requested"),
        ("requested", "approved"),
        ("approved", "processing"),
        ("processing", "completed"),
    ]
    assert events[0]["data"] == {
        "payout_id": pid,
        "from": None,
        "to": "requested",
        "usd_amount": "25.00",
        "account_last4": "6789",
        "account_type": "checking",
        "reason": None,
        "return_code": None,
        "return_reason": None,
        "contact_email": "finance@partner.example",
        "changed_at": p["created_at"],
    }
    assert ps.COMPLETES not in str(events)

    # The partner's endpoint got each of them, signed, once each (the stream's order aside).
    async def at_partner() -> list[dict[str, Any]]:
        mine = [c for c in rx.answered() if c.event["event_type"] == "payout.status_changed"]
        return [c.event for c in mine] if len(mine) >= len(events) else []

    hooks = await eventually(at_partner, timeout_s=15)
    by_id = {e["event_id"]: e for e in events}
    assert sorted(h["event_id"] for h in hooks) == sorted(by_id)
    assert all(h["data"] == by_id[h["event_id"]]["data"] for h in hooks)
    for call in rx.calls:
        verify(call, t["webhook_signing_secret"])
        assert ps.COMPLETES not in call.body.decode()


# -- racing for the owed balance ------------------------------------------------------------------


async def test_two_concurrent_requests_over_the_owed_balance_one_is_refused(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")  # $90.00 owed: $60 + $50 cannot both be held
    sixty, fifty = await asyncio.gather(ps.request(api, t, "60.00"), ps.request(api, t, "50.00"))
    assert sorted([sixty.status, fifty.status]) == [201, 400], (sixty, fifty)
    won, lost = (sixty, fifty) if sixty.status == 201 else (fifty, sixty)
    assert_envelope(lost, 400, "AMOUNT_EXCEEDS_OWED")
    assert lost.body["param"] == "usd_amount"
    held = won.body["usd_amount"]
    await assert_revenue(api, t, owed="90.00", held=held, paid_out="0.00")
    assert [x["payout_id"] for x in await listed(api, t)] == [won.body["payout_id"]]
    # What is left is still available to a payout that fits.
    rest = str(Decimal("90.00") - Decimal(held))
    assert (await ps.request(api, t, rest)).status == 201
    await assert_revenue(api, t, owed="90.00", held="90.00", paid_out="0.00")
    assert_envelope(await ps.request(api, t, "1.00"), 400, "AMOUNT_EXCEEDS_OWED")


async def test_ten_concurrent_requests_hold_only_what_is_owed(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")  # $90.00 owed: four of $20 fit
    answers = await asyncio.gather(*(ps.request(api, t, "20.00") for _ in range(10)))
    made = [r for r in answers if r.status == 201]
    refused = [r for r in answers if r.status != 201]
    assert len(made) == 4, answers
    for r in refused:
        assert_envelope(r, 400, "AMOUNT_EXCEEDS_OWED")
    await assert_revenue(api, t, owed="90.00", held="80.00", paid_out="0.00")
    assert sorted(x["payout_id"] for x in await listed(api, t)) == sorted(r.body["payout_id"] for r in made)
    assert all(x["status"] == "requested" for x in await listed(api, t))


# -- the idempotency key --------------------------------------------------------------------------


async def test_the_same_key_twice_is_one_payout_paid_once(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")
    sent = ps.body("25.00")
    first = assert_requested(await api.post("/api/payouts", key=t["sdk_key"], json=sent), sent)
    again = assert_requested(await api.post("/api/payouts", key=t["sdk_key"], json=sent), sent, status=200)
    assert again == {**first, "duplicate": True}
    await assert_revenue(api, t, owed="90.00", held="25.00", paid_out="0.00")

    assert (await ps.approve(api, first["payout_id"])).status == 200
    await ps.reaches(api, t, first["payout_id"], "completed")
    late = assert_requested(await api.post("/api/payouts", key=t["sdk_key"], json=sent), sent, status=200)
    assert (late["payout_id"], late["status"]) == (first["payout_id"], "completed")
    assert [x["payout_id"] for x in await listed(api, t)] == [first["payout_id"]]
    await assert_revenue(api, t, owed="65.00", held="0.00", paid_out="25.00")


async def test_the_same_key_ten_times_at_once_is_one_payout(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")
    sent = ps.body("25.00")
    answers = await asyncio.gather(*(api.post("/api/payouts", key=t["sdk_key"], json=sent) for _ in range(10)))
    created = [r for r in answers if r.status == 201]
    assert len(created) == 1, answers
    pid = assert_requested(created[0], sent)["payout_id"]
    for r in answers:
        if r.status == 409:
            assert_envelope(r, 409, "PAYOUT_IN_PROGRESS")
        elif r is not created[0]:
            assert (r.status, r.body["payout_id"], r.body["duplicate"]) == (200, pid, True), r
    await assert_revenue(api, t, owed="90.00", held="25.00", paid_out="0.00")
    assert [x["payout_id"] for x in await listed(api, t)] == [pid]
    again = await api.post("/api/payouts", key=t["sdk_key"], json=sent)
    assert (again.status, again.body["payout_id"], again.body["duplicate"]) == (200, pid, True)


async def test_the_key_with_another_body_is_refused(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")
    sent = ps.body("25.00")
    first = assert_requested(await api.post("/api/payouts", key=t["sdk_key"], json=sent), sent)
    others = [
        {**sent, "usd_amount": "26.00"},
        {**sent, "account_number": SECRET},  # only the account number differs
        {**sent, "account_type": "savings"},
        {**sent, "account_holder_name": "Someone Else LLC"},
        {**sent, "contact_email": "other@partner.example"},
    ]
    for other in others:
        resp = await api.post("/api/payouts", key=t["sdk_key"], json=other)
        assert_envelope(resp, 400, "IDEMPOTENCY_KEY_REUSED")
        assert SECRET not in str(resp.body) and SECRET not in str(dict(resp.headers))
    await assert_revenue(api, t, owed="90.00", held="25.00", paid_out="0.00")
    assert [(x["payout_id"], x["usd_amount"]) for x in await listed(api, t)] == [(first["payout_id"], "25.00")]
    assert (await ps.payout(api, t, first["payout_id"]))["bank_account"]["account_last4"] == "6789"


async def test_a_key_refused_for_the_amount_works_once_revenue_arrives(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")  # $90.00 owed
    sent = ps.body("100.00")
    refused = await api.post("/api/payouts", key=t["sdk_key"], json=sent)
    assert_envelope(refused, 400, "AMOUNT_EXCEEDS_OWED")
    assert refused.body["param"] == "usd_amount"
    assert await listed(api, t) == []
    await assert_revenue(api, t, owed="90.00", held="0.00", paid_out="0.00")
    # Still short: refused again, nothing kept.
    assert_envelope(await api.post("/api/payouts", key=t["sdk_key"], json=sent), 400, "AMOUNT_EXCEEDS_OWED")

    await earn(api, t, "200")  # + $18.00: $108.00 owed
    p = assert_requested(await api.post("/api/payouts", key=t["sdk_key"], json=sent), sent)
    await assert_revenue(api, t, owed="108.00", held="100.00", paid_out="0.00", lifetime="108.00")
    again = await api.post("/api/payouts", key=t["sdk_key"], json=sent)
    assert (again.status, again.body["payout_id"], again.body["duplicate"]) == (200, p["payout_id"], True)
    assert [x["payout_id"] for x in await listed(api, t)] == [p["payout_id"]]
