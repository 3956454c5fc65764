"""Subscriptions end to end on the session stack: created and charged at once, renewed on the test
clock's month later, then cancelled at the period's end; the ledger check clean."""

from __future__ import annotations

import datetime

from devstack.stack import Stack
from tests import subscriptions_support as ss
from tests.helpers import Api, eventually


async def test_create_renew_cancel_at_period_end(api: Api, stack: Stack) -> None:
    start = datetime.datetime(2031, 1, 31, 12, 0, tzinfo=datetime.UTC)
    await ss.set_clock(stack, start)
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "25")
    created = await ss.create(api, t, ss.body(email, price="10"))
    assert created.status == 201, created
    s = created.body
    assert s["status"] == "active" and s["periods_paid"] == 1 and s["duplicate"] is False, s
    assert s["current_period"] == {"start": "2031-01-31T12:00:00Z", "end": "2031-02-28T12:00:00Z"}, s
    assert s["last_charge"]["total"] == "10" and s["last_charge"]["partner_amount"] == "9", s
    assert await ss.balance(api, t, email) == "15"

    await ss.set_clock(stack, datetime.datetime(2031, 2, 28, 12, 0, tzinfo=datetime.UTC))
    await ss.renew(stack)

    async def renewed() -> dict:
        s = await ss.get(api, t, created.body["subscription_id"])
        return s if s["periods_paid"] == 2 else {}

    s = await eventually(renewed)
    assert s["current_period"] == {"start": "2031-02-28T12:00:00Z", "end": "2031-03-31T12:00:00Z"}, s
    assert await ss.balance(api, t, email) == "5"

    cancel = await api.post(f"/api/subscriptions/{s['subscription_id']}/cancel", key=t["sdk_key"])
    assert cancel.status == 200 and cancel.body["cancel_at_period_end"] is True, cancel
    await ss.set_clock(stack, datetime.datetime(2031, 3, 31, 12, 0, tzinfo=datetime.UTC))
    await ss.renew(stack)

    async def ended() -> dict:
        s = await ss.get(api, t, created.body["subscription_id"])
        return s if s["status"] == "cancelled" else {}

    s = await eventually(ended)
    assert s["cancellation_reason"] == "requested" and s["periods_paid"] == 2, s
    assert await ss.balance(api, t, email) == "5"
    kinds = [e["event_type"] for e in await ss.events(stack, t["tenant_id"], s["subscription_id"], 3)]
    assert kinds == ["subscription.created", "subscription.renewed", "subscription.cancelled"], kinds
    check = await api.get("/admin/ledger/check", admin=True)
    assert check.status == 200 and check.body["ok"] is True, check
