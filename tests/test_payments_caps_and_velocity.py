"""Currency purchases when things go wrong, limits under load: concurrent purchases never exceed
the spending caps, and velocity limits count each player's attempts and declines.

Everything goes through the public gateway and the processor simulator; the simulator's own record
(`/_sim/state`) is the proof of how many times a card was charged.
"""

from __future__ import annotations

import asyncio

from tests.helpers import Api, assert_envelope, eventually
from tests.payments_resilience_support import (
    CAPS_50_A_DAY,
    DECLINED,
    THREE_DS,
    Sim,
    balance,
    check_ledger,
    email,
    order,
    purchase,
    ref,
    sim,
    tenant,
)

__all__ = ["sim"]  # the fixture, imported for this module's tests


# -- 2. concurrent purchases against the spending caps ----------------------------------------


async def test_concurrent_purchases_never_exceed_the_daily_cap(api: Api, sim: Sim) -> None:
    t = await tenant(api, spending_caps=CAPS_50_A_DAY)
    player = email("cap")
    results = await asyncio.gather(*(purchase(api, t, player, ref(), "7.00") for _ in range(10)))
    ok = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status != 200]
    assert len(ok) == 7 and len(refused) == 3, results
    assert all(r.body["status"] == "success" for r in ok)
    for r in refused:
        assert_envelope(r, 429, "SPENDING_LIMIT_EXCEEDED")
        assert r.body["error"] == "spending_limit_exceeded"
        assert r.body["limit"] == "daily" and "daily" in r.body["message"], r.body
    assert await balance(api, t, player) == "490"
    over = await purchase(api, t, player, ref(), "1.01")
    assert_envelope(over, 429, "SPENDING_LIMIT_EXCEEDED")
    assert over.body["limit"] == "daily"

    # A declined card and an abandoned 3-D Secure challenge for the last dollar leave it available.
    declined = await purchase(api, t, player, ref(), "1.00", pm=DECLINED)
    assert_envelope(declined, 402, "CARD_DECLINED")
    challenge = await purchase(api, t, player, ref(), "1.00", pm=THREE_DS)
    assert challenge.status == 200 and challenge.body["status"] == "requires_action", challenge
    await sim.three_d_secure(challenge.body["payment_intent_id"], "fail")

    async def abandoned() -> bool:
        return (await order(api, t, challenge.body["order_id"]))["status"] == "failed"

    await eventually(abandoned)
    last = await purchase(api, t, player, ref(), "1.00")
    assert last.status == 200 and last.body["new_balance"] == "500", last
    assert await balance(api, t, player) == "500"
    await check_ledger(api)


async def test_twenty_concurrent_purchases_by_one_player_never_exceed_the_daily_cap(api: Api, sim: Sim) -> None:
    """The acceptance case as written: 20 at once, together $140 against a $50 daily cap. Refused
    purchases create no order, so they do not count as attempts either: all 13 are cap refusals."""
    t = await tenant(api, spending_caps=CAPS_50_A_DAY)
    player = email("cap20")
    results = await asyncio.gather(*(purchase(api, t, player, ref(), "7.00") for _ in range(20)))
    assert sorted(r.status for r in results) == [200] * 7 + [429] * 13, results
    for r in results:
        if r.status == 429:
            assert_envelope(r, 429, "SPENDING_LIMIT_EXCEEDED")
    # The credited total never exceeds the cap: $49 of $50, 490 units.
    assert await balance(api, t, player) == "490"
    await check_ledger(api)


async def test_two_players_racing_each_stay_under_their_own_cap(api: Api, sim: Sim) -> None:
    t = await tenant(api, spending_caps=CAPS_50_A_DAY)
    players = [email("capa"), email("capb")]
    results = await asyncio.gather(*(purchase(api, t, p, ref(), "7.00") for p in players for _ in range(10)))
    for i, p in enumerate(players):
        mine = results[i * 10 : (i + 1) * 10]
        assert sorted(r.status for r in mine) == [200] * 7 + [429] * 3, mine
        assert all(r.body["limit"] == "daily" for r in mine if r.status == 429)
        assert await balance(api, t, p) == "490"
    await check_ledger(api)


# -- 3. velocity ------------------------------------------------------------------------------


async def test_velocity_limits_attempts_and_declines_per_player(api: Api, sim: Sim) -> None:
    t = await tenant(api)
    busy, decliner, other = email("busy"), email("decliner"), email("other")
    refs = [ref() for _ in range(10)]
    first = await asyncio.gather(*(purchase(api, t, busy, r, "1.00") for r in refs))
    assert [r.status for r in first] == [200] * 10, first
    eleventh = await purchase(api, t, busy, ref(), "1.00")
    assert_envelope(eleventh, 429, "VELOCITY_LIMIT_EXCEEDED")
    assert eleventh.body["error"] == "velocity_limit_exceeded"
    assert int(eleventh.headers["Retry-After"]) > 0
    # A retry of an attempt already made is not a new attempt.
    replay = await purchase(api, t, busy, refs[0], "1.00")
    assert replay.status == 200 and replay.body["duplicate"] is True, replay
    assert await balance(api, t, busy) == "100"

    for _ in range(5):
        declined = await purchase(api, t, decliner, ref(), pm=DECLINED)
        assert_envelope(declined, 402, "CARD_DECLINED")
        assert declined.body["decline_code"] == "generic_decline"
    cooling = await purchase(api, t, decliner, ref())  # a good card, but the player is cooling down
    assert_envelope(cooling, 429, "TOO_MANY_DECLINES")
    assert int(cooling.headers["Retry-After"]) > 60
    assert await balance(api, t, decliner) == "0"

    fine = await purchase(api, t, other, ref())
    assert fine.status == 200 and fine.body["new_balance"] == "100", fine
    await check_ledger(api)
