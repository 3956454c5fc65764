"""Currency subscriptions through the gateway (`/api/subscriptions`) on the session stack and the
subscriptions service's test clock: a create charged at once (the whole answer, the balance, the
tenant's revenue, `subscription.created`), its idempotency key (twice, ten at once, another body),
a refusal for too little balance (nothing kept; after a top-up the same key creates it), a trial
charged at its end, a cancel at the period's end and its resume, a cancel at once (and of a
past_due subscription), the list's filters and pages, and another tenant's view. Hostile bodies
are test_subscriptions_hostile.py's (with these helpers); prorated cancels test_subscriptions_prorate.py's.

The test clock is shared by the whole session and a renewal loop runs on it every 0.5 s: every test
sets it to a year of its own (2040 + n) and the `subs` fixture cancels at once what the test made,
so no later move of the clock renews it. After every test, the ledger check.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devstack.stack import Stack
from tests import subscriptions_support as ss
from tests.helpers import Api, Response, assert_envelope, eventually
from tests.stream_support import read_events
from tests.subscriptions_support import _ledger_checked

__all__ = ["_ledger_checked"]  # the autouse fixture: the ledger check after each test

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)
SUB_ID = re.compile(r"^sub_[0-9A-Z]{26}$")
TXN_ID = re.compile(r"^txn_[0-9A-Z]{26}$")


def at(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=UTC)


def iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Subs:
    """The test's calls on subscriptions; every one it made is cancelled at once when it ends."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.made: dict[str, dict[str, Any]] = {}  # subscription_id -> its tenant

    async def create(self, t: dict[str, Any], sent: dict[str, Any]) -> Response:
        resp = await ss.create(self.api, t, sent)
        if resp.status in (200, 201):
            self.made[resp.body["subscription_id"]] = t
        return resp

    async def cancel(self, t: dict[str, Any], sid: str, body: Any = None) -> Response:
        return await self.api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json=body)

    async def resume(self, t: dict[str, Any], sid: str) -> Response:
        return await self.api.post(f"/api/subscriptions/{sid}/resume", key=t["sdk_key"])

    async def listed(self, t: dict[str, Any], **query: Any) -> Response:
        return await self.api.get(f"/api/subscriptions?{urllib.parse.urlencode(query)}", key=t["sdk_key"])

    async def until(self, t: dict[str, Any], sid: str, **want: Any) -> dict[str, Any]:
        """The subscription once it shows `want` (the background loop or our round moved it)."""

        async def check() -> dict[str, Any]:
            s = await ss.get(self.api, t, sid)
            return s if all(s[k] == v for k, v in want.items()) else {}

        return await eventually(check)


@pytest.fixture
async def subs(api: Api) -> AsyncIterator[Subs]:
    s = Subs(api)
    yield s
    for sid, t in s.made.items():
        resp = await s.cancel(t, sid, {"at_once": True})
        assert resp.status == 200 and resp.body["status"] == "cancelled", resp


async def revenue(api: Api, t: dict[str, Any]) -> tuple[str, str]:
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.status == 200, resp
    return resp.body["lifetime_units"], resp.body["owed_units"]


def bare(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer as GET and the list show it (without `duplicate`)."""
    return {k: v for k, v in answer.items() if k != "duplicate"}


ENDED = {"status": "cancelled", "cancellation_reason": "requested", "next_attempt_at": None}  # a cancel's changes
CHARGE = "period transaction_id total partner_amount network_fee new_balance period_start period_end charged_at".split()


def charge(*values: Any) -> dict[str, Any]:
    """A `last_charge` from its values in CHARGE's order."""
    return dict(zip(CHARGE, values, strict=True))


def expected(sent: dict[str, Any], sid: str, start: str, end: str, **changes: Any) -> dict[str, Any]:
    """The subscription `sent` made at `start` as GET shows it: active, its first period (ending at
    `end`) paid, unless `changes` say otherwise."""
    return {
        "subscription_id": sid,
        **{k: sent[k] for k in ("player_email", "plan_id", "plan_name", "price", "interval")},
        "interval_count": sent.get("interval_count", 1),
        "status": "active",
        "current_period": {"start": start, "end": end},
        "trial_end": None,
        "cancel_at_period_end": False,
        "cancellation_reason": None,
        "cancelled_at": None,
        "periods_paid": 1,
        "failed_attempts": 0,
        "next_attempt_at": end,
        "last_charge": None,
        "refund": None,
        "metadata": sent.get("metadata", {}),
        "created_at": start,
        "updated_at": start,
        **changes,
    }


def event_data(s: dict[str, Any], number: int, c: dict[str, Any] | None) -> dict[str, Any]:
    """What an event carries of the subscription `s` as the API shows it, about period `number`."""
    same = "subscription_id player_email plan_id plan_name price interval interval_count status".split()
    same += "cancel_at_period_end cancellation_reason failed_attempts next_attempt_at".split()
    amounts = "transaction_id total partner_amount network_fee new_balance".split()
    return {
        **{k: s[k] for k in same},
        "period": {"number": number, **s["current_period"]},
        **{k: c[k] if c else None for k in amounts},
        "metadata": s["metadata"],
        "refund": s["refund"],
    }


async def test_a_create_is_charged_at_once_and_announced(api: Api, stack: Stack, subs: Subs) -> None:
    start, end = "2040-01-31T09:30:00Z", "2040-02-29T09:30:00Z"  # a leap year's February
    await ss.set_clock(stack, at(2040, 1, 31, 9, 30))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "25")
    assert await revenue(api, t) == ("0", "0")
    sent = ss.body(email, price="10", metadata={"campaign": "spring", "level": 3})
    created = await subs.create(t, sent)
    assert created.status == 201, created
    sid, txn = created.body["subscription_id"], created.body["last_charge"]["transaction_id"]
    assert SUB_ID.match(sid) and TXN_ID.match(txn), created
    last = charge(1, txn, "10", "9", "1", "15", start, end, start)
    shown = expected(sent, sid, start, end, last_charge=last)
    assert created.body == {**shown, "duplicate": False}
    assert await ss.get(api, t, sid) == shown
    assert (await subs.listed(t, player_email=email)).body == {"data": [shown], "has_more": False}
    assert await ss.balance(api, t, email) == "15"
    assert await revenue(api, t) == ("9", "9")
    events = await ss.events(stack, t["tenant_id"], sid, 1)
    assert [(e["event_type"], e["tenant_id"]) for e in events] == [("subscription.created", t["tenant_id"])]
    assert events[0]["data"] == event_data(shown, 1, shown["last_charge"])
    # The charge is an item purchase of the plan, announced as one, its metadata the subscription's period.
    items = await read_events(stack, t["tenant_id"], "item", lambda seen: len(seen) >= 1)
    item = {"player_email": email, "item_id": "gold", "item_name": "Gold Pass", "quantity": 1, "price": "10"}
    item |= {"total": "10", "partner_amount": "9", "network_fee": "1", "new_balance": "15", "currency_name": "Gems"}
    item |= {"transaction_id": txn, "metadata": {"subscription_id": sid, "period": 1}}
    assert [(e["event_type"], e["data"]) for e in items.values()] == [("item.purchased", item)]


async def test_the_idempotency_key_makes_one_subscription_and_one_charge(api: Api, stack: Stack, subs: Subs) -> None:
    await ss.set_clock(stack, at(2041, 2, 10))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "35")
    sent = ss.body(email, price="10", interval="week")
    first = await subs.create(t, sent)
    assert first.status == 201, first
    again = await subs.create(t, sent)
    assert (again.status, again.body) == (200, {**first.body, "duplicate": True})
    assert await ss.balance(api, t, email) == "25"

    racing = ss.body(email, price="10", interval="week", metadata={"n": 1})
    answers = await asyncio.gather(*(subs.create(t, racing) for _ in range(10)))
    assert sorted(r.status for r in answers) == [200] * 9 + [201], answers
    [won] = [r for r in answers if r.status == 201]
    assert won.body["duplicate"] is False and won.body["periods_paid"] == 1, won
    for r in answers:
        assert r.body == {**won.body, "duplicate": r.status == 200}, r
    assert await ss.balance(api, t, email) == "15"
    ids = [s["subscription_id"] for s in (await subs.listed(t, player_email=email)).body["data"]]
    assert ids == [won.body["subscription_id"], first.body["subscription_id"]]

    for change in ({"price": "11"}, {"interval": "month"}, {"interval_count": 2}, {"metadata": {"n": 2}}):
        reused = await subs.create(t, {**racing, **change})
        assert_envelope(reused, 400, "IDEMPOTENCY_KEY_REUSED")
        assert reused.body["param"] == "idempotency_key", reused
    # interval_count 1 is the default: sent or left out, the same request.
    assert (await subs.create(t, {**racing, "interval_count": 1})).body == {**won.body, "duplicate": True}
    assert await ss.balance(api, t, email) == "15"
    assert len((await subs.listed(t)).body["data"]) == 2


async def test_too_little_balance_creates_nothing_until_topped_up(api: Api, stack: Stack, subs: Subs) -> None:
    await ss.set_clock(stack, at(2042, 3, 5))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "9.99")
    sent = ss.body(email, price="10")
    for _ in range(2):  # refused again: nothing was kept of the first try
        refused = await subs.create(t, sent)
        assert_envelope(refused, 402, "INSUFFICIENT_BALANCE")
    assert (await subs.listed(t)).body == {"data": [], "has_more": False}
    assert await ss.balance(api, t, email) == "9.99"
    assert await revenue(api, t) == ("0", "0")

    assert (await api.credit(t["tenant_id"], email, "0.01")).status == 200
    created = await subs.create(t, sent)
    assert created.status == 201, created
    sid, txn = created.body["subscription_id"], created.body["last_charge"]["transaction_id"]
    start, end = "2042-03-05T12:00:00Z", "2042-04-05T12:00:00Z"
    shown = expected(sent, sid, start, end, last_charge=charge(1, txn, "10", "9", "1", "0", start, end, start))
    assert created.body == {**shown, "duplicate": False}
    assert (await subs.create(t, sent)).body == {**shown, "duplicate": True}
    assert await ss.balance(api, t, email) == "0"
    assert await revenue(api, t) == ("9", "9")
    events = await ss.events(stack, t["tenant_id"], sid, 1)
    assert [(e["event_type"], e["data"]) for e in events] == [
        ("subscription.created", event_data(shown, 1, shown["last_charge"]))
    ]


async def test_a_trial_is_charged_at_its_end(api: Api, stack: Stack, subs: Subs) -> None:
    start = at(2043, 3, 10, 8)
    trial_end, period_end, later = start + 14 * DAY, start + 28 * DAY, start + 14 * DAY + DAY / 24
    await ss.set_clock(stack, start)
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "1")
    sent = ss.body(email, price="0.35", interval="week", interval_count=2, trial_days=14)
    created = await subs.create(t, sent)
    assert created.status == 201, created
    sid = created.body["subscription_id"]
    trialing = expected(
        sent, sid, iso(start), iso(trial_end), status="trialing", trial_end=iso(trial_end), periods_paid=0
    )
    assert created.body == {**trialing, "duplicate": False}
    assert await ss.balance(api, t, email) == "1"

    await ss.set_clock(stack, later)
    await ss.renew(stack)
    active = await subs.until(t, sid, periods_paid=1)
    txn = active["last_charge"]["transaction_id"]
    period = {"start": iso(trial_end), "end": iso(period_end)}
    # 10% of 0.35 is 0.035: the network's fee rounds down, the partner keeps the rest.
    last = charge(1, txn, "0.35", "0.32", "0.03", "0.65", period["start"], period["end"], iso(later))
    assert active == {
        **trialing,
        **{"status": "active", "current_period": period, "periods_paid": 1, "next_attempt_at": iso(period_end)},
        **{"last_charge": last, "updated_at": iso(later)},
    }
    assert await ss.balance(api, t, email) == "0.65"
    assert await revenue(api, t) == ("0.32", "0.32")
    events = await ss.events(stack, t["tenant_id"], sid, 2)
    assert [e["event_type"] for e in events] == ["subscription.created", "subscription.renewed"]
    assert [e["data"] for e in events] == [event_data(trialing, 0, None), event_data(active, 1, active["last_charge"])]


async def test_a_cancel_at_the_period_end_and_its_resume(api: Api, stack: Stack, subs: Subs) -> None:
    start, end = at(2044, 5, 20, 0), at(2044, 5, 23, 0)
    await ss.set_clock(stack, start)
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "10")
    ending = (await subs.create(t, ss.body(email, price="2", interval="day", interval_count=3))).body
    kept = (await subs.create(t, ss.body(email, price="2", interval="day", interval_count=3))).body
    a, b = ending["subscription_id"], kept["subscription_id"]
    assert ending["current_period"] == {"start": iso(start), "end": iso(end)}, ending

    await ss.set_clock(stack, start + DAY)
    cancelled = await subs.cancel(t, a)
    assert (cancelled.status, cancelled.body) == (
        200,
        {**ending, "cancel_at_period_end": True, "updated_at": iso(start + DAY)},
    )
    again = await subs.cancel(t, a, {})
    assert (again.status, again.body) == (200, {**cancelled.body, "duplicate": True})
    assert (await subs.cancel(t, b, {"at_once": False})).body["cancel_at_period_end"] is True
    resumed = await subs.resume(t, b)
    assert (resumed.status, resumed.body) == (200, {**kept, "updated_at": iso(start + DAY), "duplicate": False})
    assert (await subs.resume(t, b)).body == {**resumed.body, "duplicate": True}

    await ss.set_clock(stack, end)
    # At the period's end it can no longer be resumed, whether or not the loop has ended it yet.
    assert_envelope(await subs.resume(t, a), 409, "SUBSCRIPTION_NOT_RESUMABLE")
    await ss.renew(stack)
    renewed = await subs.until(t, b, periods_paid=2)
    assert (renewed["status"], renewed["current_period"]) == ("active", {"start": iso(end), "end": iso(end + 3 * DAY)})
    ended = await subs.until(t, a, status="cancelled")
    assert ended == {**bare(cancelled.body), **ENDED, "cancelled_at": iso(end), "updated_at": iso(end)}
    assert await ss.balance(api, t, email) == "4"  # 2 + 2 at the creates, 2 for b's renewal, none for a
    assert_envelope(await subs.resume(t, a), 409, "SUBSCRIPTION_NOT_RESUMABLE")
    events = await ss.events(stack, t["tenant_id"], a, 2)
    assert [e["event_type"] for e in events] == ["subscription.created", "subscription.cancelled"]
    assert events[1]["data"] == event_data(ended, 1, None)


async def test_a_cancel_at_once_never_charges_again(api: Api, stack: Stack, subs: Subs) -> None:
    start, month, two = at(2045, 7, 4, 18), at(2045, 8, 4, 18), at(2045, 9, 4, 18)
    await ss.set_clock(stack, start)
    t = await ss.tenant(api)
    email, broke = await ss.funded(api, t, "20"), await ss.funded(api, t, "0")
    made = (await subs.create(t, ss.body(email, price="10"))).body
    sid = made["subscription_id"]
    # A trial is never refused; its first charge, at its end (when the month ends), is.
    late = (await subs.create(t, ss.body(broke, price="10", trial_days=31))).body
    assert (late["status"], late["trial_end"]) == ("trialing", iso(month)), late

    await ss.set_clock(stack, start + DAY)
    cancelled = await subs.cancel(t, sid, {"at_once": True})
    ended = {**made, **ENDED, "cancelled_at": iso(start + DAY), "updated_at": iso(start + DAY)}
    assert (cancelled.status, cancelled.body) == (200, ended)
    for body in (None, {}, {"at_once": True}):
        again = await subs.cancel(t, sid, body)
        assert (again.status, again.body) == (200, {**ended, "duplicate": True})
    assert_envelope(await subs.resume(t, sid), 409, "SUBSCRIPTION_NOT_RESUMABLE")

    await ss.set_clock(stack, month)
    await ss.renew(stack)
    past_due = await subs.until(t, late["subscription_id"], status="past_due")
    assert (past_due["failed_attempts"], past_due["periods_paid"]) == (1, 0), past_due
    assert past_due["next_attempt_at"] == iso(month + DAY / 24), past_due  # the first retry, an hour on
    # A past_due subscription ends at once, whatever the cancel asks.
    over = await subs.cancel(t, late["subscription_id"])
    assert (over.status, over.body["status"], over.body["cancelled_at"]) == (200, "cancelled", iso(month)), over
    assert (over.body["cancel_at_period_end"], over.body["next_attempt_at"]) == (False, None), over
    await ss.set_clock(stack, two)
    await ss.renew(stack)
    assert await ss.get(api, t, sid) == bare(ended)
    assert (await ss.get(api, t, late["subscription_id"]))["status"] == "cancelled"
    assert (await ss.balance(api, t, email), await ss.balance(api, t, broke)) == ("10", "0")
    kinds = [e["event_type"] for e in await ss.events(stack, t["tenant_id"], sid, 2)]
    assert kinds == ["subscription.created", "subscription.cancelled"]
    events = await ss.events(stack, t["tenant_id"], late["subscription_id"], 3)
    assert [e["event_type"] for e in events] == [f"subscription.{k}" for k in ("created", "past_due", "cancelled")]
    # The event is about the unpaid period 1: from the trial's end, a month long.
    unpaid = {"number": 1, "start": iso(month), "end": iso(two)}
    assert events[1]["data"] == {**event_data(past_due, 1, None), "period": unpaid}, events[1]


async def test_the_list_is_filtered_newest_first_and_paged(api: Api, stack: Stack, subs: Subs) -> None:
    await ss.set_clock(stack, at(2046, 11, 1))
    t = await ss.tenant(api)
    one, two = await ss.funded(api, t, "20"), await ss.funded(api, t, "0")
    ids = [(await subs.create(t, ss.body(one, price=str(n)))).body["subscription_id"] for n in range(1, 6)]
    trial = (await subs.create(t, ss.body(two, trial_days=3))).body["subscription_id"]
    assert (await subs.cancel(t, ids[1], {"at_once": True})).status == 200
    newest = ids[::-1]

    async def page(**query: Any) -> tuple[list[str], bool]:
        resp = await subs.listed(t, **query)
        assert resp.status == 200, resp
        for s in resp.body["data"]:
            assert s == await ss.get(api, t, s["subscription_id"]), s
        return [s["subscription_id"] for s in resp.body["data"]], resp.body["has_more"]

    assert await page() == ([trial, *newest], False)
    assert await page(player_email=one) == (newest, False)
    assert await page(player_email=one.upper()) == (newest, False)  # an email is case-insensitive
    assert await page(status="trialing") == ([trial], False)
    assert await page(status="cancelled") == ([ids[1]], False)
    assert await page(status="active", player_email=one) == ([i for i in newest if i != ids[1]], False)
    assert await page(status="past_due") == ([], False)
    assert await page(player_email=ss.player()) == ([], False)
    first = await page(player_email=one, limit=2)
    second = await page(player_email=one, limit=2, starting_after=first[0][-1])
    third = await page(player_email=one, limit=2, starting_after=second[0][-1])
    assert (first, second, third) == ((newest[:2], True), (newest[2:4], True), (newest[4:], False))
    assert await page(limit=1, starting_after=newest[-1]) == ([], False)
    for bad, param in (
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "two"}, "limit"),
        ({"status": "paused"}, "status"),
        ({"starting_after": "sub_nope"}, "starting_after"),
        ({"player_email": "not-an-email"}, "player_email"),
    ):
        resp = await subs.listed(t, **bad)
        assert_envelope(resp, 400, "INVALID_PLAYER_EMAIL" if param == "player_email" else "INVALID_PARAMETER")
        assert resp.body["param"] == param, resp


async def test_another_tenant_sees_nothing_of_a_subscription(api: Api, stack: Stack, subs: Subs) -> None:
    await ss.set_clock(stack, at(2047, 4, 2))
    a, b = await ss.tenant(api), await ss.tenant(api)
    email = await ss.funded(api, a, "10")
    sent = ss.body(email, price="10")
    mine = (await subs.create(a, sent)).body
    sid = mine["subscription_id"]
    for resp in (
        await api.get(f"/api/subscriptions/{sid}", key=b["sdk_key"]),
        await subs.cancel(b, sid),
        await subs.cancel(b, sid, {"at_once": True}),
        await subs.resume(b, sid),
        await api.get("/api/subscriptions/sub_01ARZ3NDEKTSV4RRFFQ69G5FAV", key=a["sdk_key"]),
        await api.get("/api/subscriptions/not-a-subscription", key=a["sdk_key"]),
        await subs.cancel(a, "sub_nope", {"at_once": True}),
        await subs.resume(a, "pay_01ARZ3NDEKTSV4RRFFQ69G5FAV"),
    ):
        assert_envelope(resp, 404, "SUBSCRIPTION_NOT_FOUND")
    assert (await subs.listed(b)).body == {"data": [], "has_more": False}
    assert (await subs.listed(b, player_email=email)).body == {"data": [], "has_more": False}
    assert (await subs.listed(b, starting_after="sub_7ZZZZZZZZZZZZZZZZZZZZZZZZZ")).body["data"] == []
    assert await ss.get(api, a, sid) == bare(mine)
    # Keys are per tenant: b's same key and body is b's own subscription (its player is b's).
    assert (await api.credit(b["tenant_id"], email, "10")).status == 200
    theirs = await subs.create(b, sent)
    assert (theirs.status, theirs.body["duplicate"]) == (201, False), theirs
    assert theirs.body["subscription_id"] != sid
    assert (await ss.balance(api, a, email), await ss.balance(api, b, email)) == ("0", "0")
