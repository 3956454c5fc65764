"""The retry schedule when the renewal loop comes late: a subscription whose renewal is first
tried three days after its due time (the loop was down) is not run through every retry at once:
its next try is the schedule's first gap (1 hour) after that try, and rounds before then do
nothing, so the player still has the time to top up that the schedule promises."""

from __future__ import annotations

import datetime

from devstack.stack import Stack
from tests import subscriptions_support as ss
from tests.helpers import Api, eventually

UTC = datetime.UTC


async def test_a_late_first_try_leaves_the_schedules_gap_before_the_next(api: Api, stack: Stack) -> None:
    start, due = datetime.datetime(2076, 1, 10, tzinfo=UTC), datetime.datetime(2076, 2, 10, tzinfo=UTC)
    await ss.set_clock(stack, start)
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "10")
    created = await ss.create(api, t, ss.body(email, price="10"))
    assert created.status == 201, created
    sid = created.body["subscription_id"]
    late = due + datetime.timedelta(days=3, hours=1)  # past every step of the schedule
    await ss.set_clock(stack, late)
    await ss.renew(stack)

    async def past_due() -> dict:
        s = await ss.get(api, t, sid)
        return s if s["status"] == "past_due" else {}

    s = await eventually(past_due)
    next_at = late + datetime.timedelta(hours=1)
    assert (s["failed_attempts"], s["next_attempt_at"]) == (1, next_at.strftime("%Y-%m-%dT%H:%M:%SZ")), s
    # Rounds until then change nothing; at it, the second try (still refused).
    await ss.set_clock(stack, next_at - datetime.timedelta(minutes=1))
    await ss.renew(stack)
    assert (await ss.get(api, t, sid))["failed_attempts"] == 1
    await ss.set_clock(stack, next_at)
    await ss.renew(stack)

    async def second() -> dict:
        s = await ss.get(api, t, sid)
        return s if s["failed_attempts"] == 2 else {}

    s = await eventually(second)
    # The next step is 1 day after the due time, long past: the schedule's gap (23 h) after this try.
    want = next_at + datetime.timedelta(hours=23)
    assert (s["status"], s["next_attempt_at"]) == ("past_due", want.strftime("%Y-%m-%dT%H:%M:%SZ")), s
    done = await api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json={"at_once": True})
    assert done.status == 200 and done.body["status"] == "cancelled", done
