"""A payout end to end: owed revenue, the request (held at once), an operator's approval, the
payment order through the Modern Treasury SDK to the simulator, its signed webhooks back, the
hold posted, every transition announced. The detailed tests are in test_payouts_*.py."""

from __future__ import annotations

from devstack.stack import Stack
from tests import payouts_support as ps
from tests.helpers import Api


async def test_a_payout_is_requested_approved_sent_and_completed(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")  # 900 units owed: $90.00
    asked = await ps.request(api, t, "25.00")
    assert asked.status == 201, asked
    p = asked.body
    assert (p["status"], p["usd_amount"], p["bank_account"]["account_last4"]) == ("requested", "25.00", "6789")
    assert "123456789" not in str(asked.body)
    rev = await ps.revenue(api, t)
    assert (rev["owed_usd"], rev["held_usd"], rev["available_usd"]) == ("90.00", "25.00", "65.00")

    approved = await ps.approve(api, p["payout_id"])
    assert approved.status == 200, approved
    done = await ps.reaches(api, t, p["payout_id"], "completed")
    assert [(h["from"], h["to"]) for h in done["history"]] == [
        (None, "requested"),
        ("requested", "approved"),
        ("approved", "processing"),
        ("processing", "completed"),
    ]
    await ps.revenue_reaches(api, t, owed="65.00", held="0.00", paid_out="25.00")
    events = await ps.status_events(stack, t["tenant_id"], p["payout_id"], 4)
    assert [(e["data"]["from"], e["data"]["to"]) for e in events] == [
        (None, "requested"),
        ("requested", "approved"),
        ("approved", "processing"),
        ("processing", "completed"),
    ]
    assert all(e["data"]["account_last4"] == "6789" and e["data"]["usd_amount"] == "25.00" for e in events)
    await ps.check_ledger(api)
