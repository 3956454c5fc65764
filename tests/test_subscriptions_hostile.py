"""Hostile subscription requests through the gateway: a table of bad create and cancel bodies
(each a 400 naming its field, nothing created or charged, the subscription unchanged), and
hypothesis over plan shapes and prices (a valid plan reaches the charge, refused for a player
with nothing; an invalid one names its first bad field; never a 5xx). The helpers and fixtures are
test_subscriptions_api.py's; after every test, the ledger check."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devstack.stack import Stack
from tests import subscriptions_support as ss
from tests.helpers import Api, assert_envelope
from tests.subscriptions_support import _ledger_checked
from tests.test_subscriptions_api import Subs, at, bare, iso, revenue, subs

__all__ = ["_ledger_checked", "subs"]  # the fixtures

MISSING = object()  # a field left out of the body (the generated strategies cover the rest: see below)
BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"idempotency_key": MISSING}, "MISSING_IDEMPOTENCY_KEY", "idempotency_key"),
    ({"idempotency_key": ""}, "INVALID_IDEMPOTENCY_KEY", "idempotency_key"),
    ({"player_email": MISSING}, "MISSING_PARAMETER", "player_email"),
    ({"player_email": "nobody"}, "INVALID_PLAYER_EMAIL", "player_email"),
    ({"plan_id": "   "}, "INVALID_PARAMETER", "plan_id"),
    ({"interval": "year"}, "INVALID_PARAMETER", "interval"),
    ({"interval_count": 13}, "INVALID_PARAMETER", "interval_count"),
    ({"interval": "week", "interval_count": 13}, "INVALID_PARAMETER", "interval_count"),
    ({"interval_count": "2"}, "INVALID_PARAMETER", "interval_count"),
    ({"price": "0"}, "INVALID_PARAMETER", "price"),
    ({"price": "-1"}, "INVALID_PARAMETER", "price"),
    ({"price": "1.005"}, "INVALID_PARAMETER", "price"),
    ({"price": "10000000000.01"}, "INVALID_PARAMETER", "price"),
    ({"trial_days": -1}, "INVALID_PARAMETER", "trial_days"),
    ({"trial_days": 731}, "INVALID_PARAMETER", "trial_days"),
    ({"discount": "10%"}, "UNKNOWN_FIELD", "discount"),
    ({"metadata": "vip"}, "INVALID_PARAMETER", "metadata"),
]


async def test_a_bad_request_creates_and_charges_nothing(api: Api, stack: Stack, subs: Subs) -> None:
    await ss.set_clock(stack, at(2048, 8, 8))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "100")
    for change, code, param in BAD:
        sent = {k: v for k, v in {**ss.body(email), **change}.items() if v is not MISSING}
        resp = await subs.create(t, sent)
        assert_envelope(resp, 400, code)
        assert resp.body["param"] == param, (change, resp)
    assert (await subs.listed(t)).body == {"data": [], "has_more": False}
    assert await ss.balance(api, t, email) == "100"
    assert await revenue(api, t) == ("0", "0")
    # The limits themselves are accepted.
    made = await subs.create(t, ss.body(email, price="0.01", interval_count=12, trial_days=730))
    assert (made.status, made.body["status"], made.body["trial_end"]) == (201, "trialing", iso(at(2050, 8, 8)))
    sid = made.body["subscription_id"]
    for body, code, param in (
        ({"at_once": "yes"}, "INVALID_PARAMETER", "at_once"),
        ({"now": True}, "UNKNOWN_FIELD", "now"),
    ):
        resp = await subs.cancel(t, sid, body)
        assert_envelope(resp, 400, code)
        assert resp.body["param"] == param, resp
    assert await ss.get(api, t, sid) == bare(made.body)


INTERVALS = st.sampled_from(["day", "week", "month", "year", "Month", ""])
COUNTS = st.one_of(st.none(), st.integers(1, 12), st.integers(-1, 40))
# A price in thousandths of a unit, sent as its shortest text: half of them whole hundredths.
THOUSANDTHS = st.one_of(st.integers(1, 10_000).map(lambda n: n * 10), st.integers(-20, 100_000))
FUZZ = settings(
    max_examples=80, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
COUNT_MAX = 12  # intervals a period, whatever the interval (README, "Subscriptions")


def price_text(thousandths: int) -> str:
    return format((Decimal(thousandths) / 1000).normalize(), "f")


async def test_plan_shapes_and_prices_are_accepted_or_refused_consistently(api: Api, stack: Stack, subs: Subs) -> None:
    """A valid plan reaches the charge, refused for a player with nothing (402, nothing kept); an
    invalid one is 400 INVALID_PARAMETER naming its first bad field in body order, never a 5xx."""
    await ss.set_clock(stack, at(2049, 6, 1))
    t = await ss.tenant(api)
    broke = await ss.funded(api, t, "0")
    statuses: list[int] = []

    def explore() -> None:  # in a thread of its own: hypothesis runs the examples synchronously
        loop = asyncio.new_event_loop()
        client = Api(stack.gateway_url, admin_token=stack.env["INVO_ADMIN_TOKEN"])
        loop.run_until_complete(client.__aenter__())

        @FUZZ
        @given(interval=INTERVALS, count=COUNTS, thousandths=THOUSANDTHS)
        @example(interval="day", count=12, thousandths=10)
        @example(interval="week", count=13, thousandths=10)
        @example(interval="month", count=0, thousandths=5)
        def one(interval: str, count: int | None, thousandths: int) -> None:
            sent = ss.body(broke, price=price_text(thousandths), interval=interval)
            if count is not None:
                sent["interval_count"] = count
            resp = loop.run_until_complete(ss.create(client, t, sent))
            statuses.append(resp.status)
            checks = (
                ("price", thousandths > 0 and thousandths % 10 == 0),
                ("interval", interval in ("day", "week", "month")),
                ("interval_count", count is None or 1 <= count <= COUNT_MAX),
            )
            bad = [param for param, ok in checks if not ok]
            if bad:
                assert_envelope(resp, 400, "INVALID_PARAMETER")
                assert resp.body["param"] == bad[0], (sent, resp)
            else:
                assert_envelope(resp, 402, "INSUFFICIENT_BALANCE")

        try:
            one()
        finally:
            loop.run_until_complete(client.__aexit__())
            loop.close()

    await asyncio.to_thread(explore)
    assert statuses.count(402) >= 10 and statuses.count(400) >= 10, statuses  # both sides explored
    assert (await subs.listed(t)).body == {"data": [], "has_more": False}
    assert await ss.balance(api, t, broke) == "0"
