"""Subscription renewals on the session stack, the test clock moved instead of waiting: a monthly
plan renewed on anchored month ends; a refused renewal (too little balance, or a debt) past_due and
retried on the schedule (1 h, 1 day, 3 days after the due time), recovered by a top-up or cancelled
(payment_failed) after the last retry; and the supervised loop renewing on its own. Replicas racing,
the service SIGKILLed mid-round and cancels racing a round are test_subscriptions_races.py's (with
these helpers): every period charged once, by one ledger purchase keyed by (subscription, period).

The clock and the background loop are shared by the session: each test sets its own year (far from
the others'), and what it made is cancelled after it. After every test, the ledger check.
"""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from invo.v1 import subscriptions_pb2, subscriptions_pb2_grpc

from devstack.stack import Stack
from tests import subscriptions_support as ss
from tests.after_sale_support import paid, refund
from tests.helpers import Api, eventually
from tests.stream_support import Seen, read_events
from tests.subscriptions_support import _ledger_checked, db, schema

__all__ = ["_ledger_checked"]  # the autouse fixture: the ledger check after each test

HOUR, DAY = datetime.timedelta(hours=1), datetime.timedelta(days=1)
TXN = re.compile(r"^txn_[0-9A-Z]{26}$")
Made = list[tuple[dict[str, Any], str]]


def at(year: int, month: int, day: int, hour: int = 12) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, tzinfo=datetime.UTC)


def iso(when: datetime.datetime | None) -> str | None:
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- fixtures and helpers -----------------------------------------------------------------------------


@pytest.fixture
async def made(api: Api) -> AsyncIterator[Made]:
    """What the test subscribed (tenant, subscription_id): cancelled at once after it."""
    subs: Made = []
    yield subs
    for t, sid in subs:
        resp = await api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json={"at_once": True})
        assert resp.status == 200 and resp.body["status"] == "cancelled", resp


async def tenant_at(api: Api, stack: Stack, start: datetime.datetime) -> dict[str, Any]:
    """The clock at `start` (the test's own year), and a new tenant."""
    await ss.set_clock(stack, start)
    return await ss.tenant(api)


async def subscriber(
    api: Api, t: dict[str, Any], funds: str, made: Made, email: str = "", price: str = "10"
) -> tuple[str, dict[str, Any]]:
    """A player (`email`, or a new one funded with `funds`) subscribed to the Gold Pass: (player, subscription)."""
    email = email or await ss.funded(api, t, funds)
    resp = await ss.create(api, t, ss.body(email, price=price))
    assert resp.status == 201, resp
    made.append((t, resp.body["subscription_id"]))
    return email, dict(resp.body)


async def clock(stack: Stack, when: datetime.datetime) -> None:
    """The clock at `when`, then one renewal round (the background loop may run it first)."""
    await ss.set_clock(stack, when)
    await ss.renew(stack)


async def until(api: Api, t: dict[str, Any], sid: str, **want: Any) -> dict[str, Any]:
    """The subscription once its fields are `want` (the last one read in the failure if never)."""
    last: dict[str, Any] = {}

    async def check() -> bool:
        last.update(await ss.get(api, t, sid))
        return all(last[k] == v for k, v in want.items())

    await eventually(check, timeout_s=20, describe=lambda: f"{sid} never had {want}: {last}")
    return dict(last)


SAME = ("subscription_id", "player_email", "plan_id", "plan_name", "price", "interval", "interval_count", "status")
MONEY = ("transaction_id", "total", "partner_amount", "network_fee", "new_balance")
GOLD = {"plan_id": "gold", "plan_name": "Gold Pass", "price": "10", "interval": "month", "interval_count": 1}
UNCHANGING: dict[str, Any] = {"trial_end": None, "cancel_at_period_end": False, "metadata": {}, "refund": None}
ACTIVE = {"status": "active", "cancellation_reason": None, "cancelled_at": None, "failed_attempts": 0}


def view(
    s: dict[str, Any], paid: int, period: tuple[Any, ...], charged: tuple[Any, str], **over: Any
) -> dict[str, Any]:
    """The whole body of a monthly Gold Pass at 10 with `paid` periods, the last `period` (start,
    end) paid at `charged` (when, the new balance): active and renewed on time, but for `over`."""
    when, balance = charged
    txn = (s["last_charge"] or {}).get("transaction_id")
    assert TXN.match(str(txn)), s
    start, end = iso(period[0]), iso(period[1])
    charge = dict(zip(MONEY, (txn, "10", "9", "1", balance), strict=True))
    return {
        **{k: s[k] for k in ("subscription_id", "player_email", "created_at", "duplicate") if k in s},
        **GOLD,
        **UNCHANGING,
        **ACTIVE,
        "current_period": {"start": start, "end": end},
        "periods_paid": paid,
        "next_attempt_at": end,
        "last_charge": {"period": paid, **charge, "period_start": start, "period_end": end, "charged_at": iso(when)},
        "updated_at": iso(when),
        **over,
    }


def event_of(s: dict[str, Any], number: int, period: dict[str, Any], *, charged: bool) -> dict[str, Any]:
    """The data of the event that left the subscription as `s` (its API body), about period
    `number` (its dates `period`), with the amounts of `s`'s last charge if `charged`."""
    c = s["last_charge"] if charged else {}
    return {
        **{k: s[k] for k in (*SAME, "cancel_at_period_end", "cancellation_reason", "failed_attempts", "metadata")},
        "period": {"number": number, **period},
        "next_attempt_at": s["next_attempt_at"],
        **{k: c.get(k) for k in MONEY},
        "refund": None,
    }


async def ledger_periods(stack: Stack, sids: list[str]) -> dict[str, list[int]]:
    """Each subscription's periods as the ledger charged them, one per ledger transaction."""
    m = "metadata->'metadata'"
    rows = await db(
        stack,
        f"SELECT sid, array_agg(period ORDER BY period) AS periods FROM (SELECT {m}->>'subscription_id' AS sid,"
        f" ({m}->>'period')::int AS period FROM {schema(stack, 'ledger')}.transactions"
        f" WHERE kind = 'item_purchase' AND {m}->>'subscription_id' = ANY($1)) AS charged GROUP BY sid",
        sids,
    )
    return {sid: [] for sid in sids} | {r["sid"]: r["periods"] for r in rows}


async def row_of(stack: Stack, sid: str) -> asyncpg.Record:
    """The subscription's row (the refusal's code, `last_failure`, is not in the API)."""
    [row] = await db(
        stack, f"SELECT * FROM {schema(stack, 'subscriptions')}.subscriptions WHERE subscription_id = $1", sid
    )
    return row


async def every(stack: Stack, sids: Any, where: str = "periods_paid >= 2") -> bool:
    """Are all of `sids` `where` (an SQL condition written here; by default, renewed)?"""
    table = f"{schema(stack, 'subscriptions')}.subscriptions"
    [r] = await db(stack, f"SELECT count(*) AS n FROM {table} WHERE subscription_id = ANY($1) AND {where}", list(sids))
    return int(r["n"]) == len(sids)


async def kinds_by_subscription(stack: Stack, tenant_id: str, want: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each subscription's event types in stream order (an event once, whatever its deliveries),
    read until every one of `want` has as many as expected."""

    def by_sub(seen: Seen) -> dict[str, list[str]]:
        unique = {e["event_id"]: e for _, e in sorted(seen.items())}
        return {sid: [e["event_type"] for e in unique.values() if e["data"]["subscription_id"] == sid] for sid in want}

    def enough(seen: Seen) -> bool:
        return all(len(kinds) >= len(want[sid]) for sid, kinds in by_sub(seen).items())

    return by_sub(await read_events(stack, tenant_id, "subscription", enough))


async def renew_at(address: str) -> None:
    """One renewal round on the replica at `address`."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = subscriptions_pb2_grpc.SubscriptionsServiceStub(channel)
        await stub.RenewDue(subscriptions_pb2.RenewDueRequest(), timeout=30)


async def many(api: Api, t: dict[str, Any], n: int, funds: str, made: Made) -> dict[str, str]:
    """`n` subscribers funded with `funds`: subscription_id -> player."""
    return {
        s["subscription_id"]: e for e, s in await asyncio.gather(*(subscriber(api, t, funds, made) for _ in range(n)))
    }


# -- renewals -----------------------------------------------------------------------------------------


async def test_a_monthly_plan_renews_three_times_on_anchored_month_ends(api: Api, stack: Stack, made: Made) -> None:
    start = at(2061, 1, 31)
    ends = [at(2061, 2, 28), at(2061, 3, 31), at(2061, 4, 30), at(2061, 5, 31)]
    t = await tenant_at(api, stack, start)
    email, s = await subscriber(api, t, "45", made)
    sid = s["subscription_id"]
    assert s == view(s, 1, (start, ends[0]), (start, "35"))
    assert (s["created_at"], s["duplicate"]) == (iso(start), False)
    seen = [s]

    for n in (2, 3, 4):
        due, end, left = ends[n - 2], ends[n - 1], str(45 - 10 * n)
        await clock(stack, due)
        s = await until(api, t, sid, periods_paid=n)
        assert s == view(s, n, (due, end), (due, left))
        assert await ss.balance(api, t, email) == left
        seen.append(s)
        await ss.renew(stack)  # another round at the same time: nothing more is due
        assert (await ss.get(api, t, sid))["periods_paid"] == n

    assert await ss.balance(api, t, email) == "5"
    assert len({x["last_charge"]["transaction_id"] for x in seen}) == 4
    assert await ledger_periods(stack, [sid]) == {sid: [1, 2, 3, 4]}
    events = await ss.events(stack, t["tenant_id"], sid, 4)
    assert [e["event_type"] for e in events] == ["subscription.created"] + ["subscription.renewed"] * 3
    for n, e in enumerate(events, start=1):
        assert e["data"] == event_of(seen[n - 1], n, seen[n - 1]["current_period"], charged=True), e


async def test_past_due_then_a_top_up_renews_at_the_retry(api: Api, stack: Stack, made: Made) -> None:
    start, due, end = at(2062, 1, 31), at(2062, 2, 28), at(2062, 3, 31)
    t = await tenant_at(api, stack, start)
    email, created = await subscriber(api, t, "15", made)
    sid = created["subscription_id"]

    await clock(stack, due)
    late = await until(api, t, sid, status="past_due")
    retry = {"next_attempt_at": iso(due + HOUR), "updated_at": iso(due)}
    assert late == view(late, 1, (start, due), (start, "5"), status="past_due", failed_attempts=1, **retry)
    assert (await row_of(stack, sid))["last_failure"] == "INSUFFICIENT_BALANCE"
    await ss.renew(stack)  # before the retry's time: not tried again
    assert (await ss.get(api, t, sid))["failed_attempts"] == 1
    assert await ss.balance(api, t, email) == "5"

    assert (await api.credit(t["tenant_id"], email, "10")).status == 200
    await clock(stack, due + HOUR)
    s = await until(api, t, sid, status="active")
    # The period that was due is paid, with its own dates: from February 28 (not an hour later) to March 31.
    assert s == view(s, 2, (due, end), (due + HOUR, "5"))
    assert await ss.balance(api, t, email) == "5"
    assert (await row_of(stack, sid))["last_failure"] is None
    assert await ledger_periods(stack, [sid]) == {sid: [1, 2]}

    events = await ss.events(stack, t["tenant_id"], sid, 3)
    kinds = [e["event_type"] for e in events]
    assert kinds == ["subscription.created", "subscription.past_due", "subscription.renewed"], kinds  # one past_due
    # The past_due event's period dates: test_the_past_due_event_carries_the_unpaid_periods_dates.
    got = {**events[1]["data"], "period": events[1]["data"]["period"]["number"]}
    assert got == {**event_of(late, 2, {}, charged=False), "period": 2}, got
    assert events[2]["data"] == event_of(s, 2, {"start": iso(due), "end": iso(end)}, charged=True), events[2]


async def test_the_past_due_event_carries_the_unpaid_periods_dates(api: Api, stack: Stack, made: Made) -> None:
    """Event data's `period` is "the period the event is about (its number and dates)"
    (messages.event_data): for past_due, number 2, the unpaid period, August 31 to September 30."""
    start, due, end = at(2062, 7, 31), at(2062, 8, 31), at(2062, 9, 30)
    t = await tenant_at(api, stack, start)
    sid = (await subscriber(api, t, "10", made))[1]["subscription_id"]
    await clock(stack, due)
    [_, late] = await ss.events(stack, t["tenant_id"], sid, 2)
    assert late["event_type"] == "subscription.past_due"
    assert late["data"]["period"] == {"number": 2, "start": iso(due), "end": iso(end)}, late["data"]


async def test_past_due_through_every_retry_is_cancelled_and_never_charged(api: Api, stack: Stack, made: Made) -> None:
    start, due = at(2063, 1, 31), at(2063, 2, 28)
    t = await tenant_at(api, stack, start)
    email, created = await subscriber(api, t, "10", made)
    sid = created["subscription_id"]
    first, was = (start, "0"), (start, due)

    retries = [due + HOUR, due + DAY, due + 3 * DAY]
    for n, when in enumerate([due, *retries[:2]], start=1):
        await clock(stack, when)
        s = await until(api, t, sid, failed_attempts=n)
        retry = {"next_attempt_at": iso(retries[n - 1]), "updated_at": iso(when)}
        assert s == view(s, 1, was, first, status="past_due", failed_attempts=n, **retry)
        assert (await row_of(stack, sid))["last_failure"] == "INSUFFICIENT_BALANCE"

    last = retries[2]
    await clock(stack, last)
    s = await until(api, t, sid, status="cancelled")
    # Four refusals in all: the first and three retries, the last of which cancels.
    ended = {"cancellation_reason": "payment_failed", "cancelled_at": iso(last), "updated_at": iso(last)}
    assert s == view(s, 1, was, first, status="cancelled", failed_attempts=4, next_attempt_at=None, **ended)
    events = await ss.events(stack, t["tenant_id"], sid, 3)
    kinds = [e["event_type"] for e in events]
    assert kinds == ["subscription.created", "subscription.past_due", "subscription.cancelled"], kinds
    assert events[2]["data"] == event_of(s, 1, s["current_period"], charged=False), events[2]

    # Money arriving later, the clock months on: nothing is charged.
    assert (await api.credit(t["tenant_id"], email, "100")).status == 200
    await clock(stack, at(2063, 6, 30))
    assert (await ss.get(api, t, sid))["periods_paid"] == 1
    assert await ss.balance(api, t, email) == "100"
    assert await ledger_periods(stack, [sid]) == {sid: [1]}


async def test_a_player_in_debt_is_refused_like_too_little_balance(api: Api, stack: Stack, made: Made) -> None:
    start, due, end = at(2064, 3, 10), at(2064, 4, 10), at(2064, 5, 10)
    t = await tenant_at(api, stack, start)
    email, bought = await paid(api, t)  # $10: 100 units
    sid = (await subscriber(api, t, "0", made, email=email, price="100"))[1]["subscription_id"]
    refunded = await refund(api, bought["order_id"])  # the units already spent: a debt of 100
    assert refunded.status == 201 and refunded.body["refund"]["new_balance"] == "-100", refunded

    await clock(stack, due)
    s = await until(api, t, sid, status="past_due")
    assert (s["failed_attempts"], s["next_attempt_at"], s["periods_paid"]) == (1, iso(due + HOUR), 1), s
    assert (await row_of(stack, sid))["last_failure"] == "PLAYER_IN_DEBT"
    assert await ss.balance(api, t, email) == "-100"

    assert (await api.credit(t["tenant_id"], email, "200")).status == 200  # the debt repaid, 100 left
    await clock(stack, due + HOUR)
    s = await until(api, t, sid, status="active")
    assert (s["periods_paid"], s["current_period"]) == (2, {"start": iso(due), "end": iso(end)}), s
    assert await ss.balance(api, t, email) == "0"
    kinds = [e["event_type"] for e in await ss.events(stack, t["tenant_id"], sid, 3)]
    assert kinds == ["subscription.created", "subscription.past_due", "subscription.renewed"], kinds
    assert await ledger_periods(stack, [sid]) == {sid: [1, 2]}


# -- replicas, crashes and cancels racing ------------------------------------------------------------


async def test_the_supervised_loop_renews_without_being_asked(api: Api, stack: Stack, made: Made) -> None:
    start, due, end = at(2068, 2, 29), at(2068, 3, 29), at(2068, 4, 29)
    t = await tenant_at(api, stack, start)
    email, created = await subscriber(api, t, "20", made)
    sid = created["subscription_id"]
    await ss.set_clock(stack, due)  # no RenewDue call: the loop's own round (every 0.5 s)
    s = await until(api, t, sid, periods_paid=2)
    assert s == view(s, 2, (due, end), (due, "0"))
    assert await ss.balance(api, t, email) == "0"
    kinds = [e["event_type"] for e in await ss.events(stack, t["tenant_id"], sid, 2)]
    assert kinds == ["subscription.created", "subscription.renewed"]
