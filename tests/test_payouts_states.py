"""Payouts that do not end `completed`, each restoring the revenue with its events (a rejection by
an operator, a cancel by the partner, a bank failure, ACH returns R01 by account number and R03 by
the simulator's control); the validation of a request (nothing kept, the account number never
echoed); reading (newest first, the status filter, pages) and two tenants on every route. The
helpers and the after-each ledger check are test_payouts_flows.py's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from devstack.stack import Stack
from tests import payouts_support as ps
from tests.helpers import Api, assert_envelope
from tests.test_payouts_flows import (
    SECRET,
    _ledger_checked,  # noqa: F401 (the autouse fixture: the ledger check after each test)
    admin_view,
    assert_events,
    assert_revenue,
    history,
    listed,
    sim,
)

FAILURE_REASON = "The receiving bank rejected the payment before settlement (simulated)."
PROVIDER_PATH = [
    ("requested", "approved"),
    ("approved", "processing"),
    ("processing", "completed"),
]


def path(p: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(h["from"], h["to"]) for h in p["history"]]


async def cancel(api: Api, t: dict[str, Any], payout_id: str) -> Any:
    return await api.post(f"/api/payouts/{payout_id}/cancel", key=t["sdk_key"])


# -- the ends: each restores the revenue ---------------------------------------------------------


async def test_an_operator_rejects_with_a_reason_and_the_revenue_is_owed_again(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")
    checker = await ps.operator(api)
    pid = (await ps.request(api, t, "25.00")).body["payout_id"]
    why = "The bank account is not the one on the agreement."
    resp = await ps.reject(api, pid, why, checker)
    assert resp.status == 200, resp
    p = await ps.payout(api, t, pid)
    assert (p["status"], p["reason"], p["approvals_received"]) == ("rejected", why, 0)
    assert p["ended_at"] and p["approved_at"] is None and p["completed_at"] is None
    assert p["history"][1] == {
        "from": "requested",
        "to": "rejected",
        "source": f"operator:{checker['operator_id']}",
        "reason": why,
        "at": p["ended_at"],
    }
    await assert_revenue(api, t, owed="90.00", held="0.00", paid_out="0.00")
    events = await assert_events(stack, t, p)
    assert events[-1]["data"]["reason"] == why
    # Ended: no review, no cancel, nothing moves.
    assert_envelope(await ps.approve(api, pid), 409, "PAYOUT_NOT_PENDING_REVIEW")
    assert_envelope(await ps.reject(api, pid, "again"), 409, "PAYOUT_NOT_PENDING_REVIEW")
    assert_envelope(await cancel(api, t, pid), 409, "PAYOUT_NOT_CANCELLABLE")
    assert (await ps.payout(api, t, pid))["history"] == p["history"]
    await assert_revenue(api, t, owed="90.00", held="0.00", paid_out="0.00")


async def test_the_partner_cancels_once_and_not_after_approval(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")
    pid = (await ps.request(api, t, "25.00")).body["payout_id"]
    first = await cancel(api, t, pid)
    assert first.status == 200, first
    assert (first.body["status"], first.body["reason"], first.body["duplicate"]) == (
        "cancelled",
        "cancelled by the partner",
        False,
    )
    assert first.body["ended_at"]
    assert history(first.body) == [(None, "requested", "partner"), ("requested", "cancelled", "partner")]
    await assert_revenue(api, t, owed="90.00", held="0.00", paid_out="0.00")
    again = await cancel(api, t, pid)
    assert again.status == 200, again
    assert again.body == {**first.body, "duplicate": True}
    await assert_events(stack, t, first.body)  # two, the repeated cancel announced nothing
    assert_envelope(await ps.approve(api, pid), 409, "PAYOUT_NOT_PENDING_REVIEW")

    # Approved, it is on its way: too late to cancel, and it is paid.
    sent = (await ps.request(api, t, "10.00")).body["payout_id"]
    assert (await ps.approve(api, sent)).status == 200
    late = await cancel(api, t, sent)
    assert_envelope(late, 409, "PAYOUT_NOT_CANCELLABLE")
    assert late.body["payout_status"] in ("approved", "processing", "completed")
    done = await ps.reaches(api, t, sent, "completed")
    assert ("cancelled" not in str(path(done))) and done["reason"] is None
    await assert_revenue(api, t, owed="80.00", held="0.00", paid_out="10.00")


async def test_a_cancel_racing_an_approval_one_wins_and_the_revenue_agrees(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")
    checker = await ps.operator(api)
    ids = [(await ps.request(api, t, "10.00")).body["payout_id"] for _ in range(4)]
    answers = await asyncio.gather(
        *(call for pid in ids for call in (cancel(api, t, pid), cancel(api, t, pid), ps.approve(api, pid, checker)))
    )
    paid = 0
    for n, pid in enumerate(ids):
        first, second, approval = answers[3 * n : 3 * n + 3]
        if approval.status == 200:  # approved first: both cancels refused, and it is paid
            for c in (first, second):
                assert_envelope(c, 409, "PAYOUT_NOT_CANCELLABLE")
            done = await ps.reaches(api, t, pid, "completed")
            assert [h["to"] for h in done["history"]] == ["requested", "approved", "processing", "completed"]
            paid += 10
        else:  # cancelled first: one cancel did it, the other answers it, the approval is refused
            assert_envelope(approval, 409, "PAYOUT_NOT_PENDING_REVIEW")
            assert (first.status, second.status) == (200, 200), (first, second)
            assert sorted([first.body["duplicate"], second.body["duplicate"]]) == [False, True]
            done = await ps.payout(api, t, pid)
            assert [h["to"] for h in done["history"]] == ["requested", "cancelled"]
        await assert_events(stack, t, done)
    owed = f"{90 - paid}.00"
    await assert_revenue(api, t, owed=owed, held="0.00", paid_out=f"{paid}.00")


async def test_a_bank_failure_after_processing_voids_the_hold(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")
    pid = (await ps.request(api, t, "25.00", ps.FAILS)).body["payout_id"]
    assert (await ps.approve(api, pid)).status == 200
    p = await ps.reaches(api, t, pid, "failed")
    assert path(p) == [(None, "requested"), *PROVIDER_PATH[:2], ("processing", "failed")]
    assert p["history"][-1]["source"] == "provider"
    assert (p["reason"], p["return_code"], p["completed_at"]) == (FAILURE_REASON, None, None)
    assert p["ended_at"] and p["bank_account"]["account_last4"] == "1110"
    await assert_revenue(api, t, owed="90.00", held="0.00", paid_out="0.00")
    events = await assert_events(stack, t, p)
    assert events[-1]["data"]["reason"] == FAILURE_REASON and events[-1]["data"]["to"] == "failed"
    assert_envelope(await cancel(api, t, pid), 409, "PAYOUT_NOT_CANCELLABLE")
    # The whole amount may be asked for again.
    assert (await ps.request(api, t, "90.00")).status == 201


async def test_an_ach_return_r01_after_completion_credits_the_revenue_back(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")
    pid = (await ps.request(api, t, "25.00", ps.RETURNS_R01)).body["payout_id"]
    assert (await ps.approve(api, pid)).status == 200
    p = await ps.reaches(api, t, pid, "returned")
    assert path(p) == [(None, "requested"), *PROVIDER_PATH, ("completed", "returned")]
    assert (p["return_code"], p["return_reason"], p["reason"]) == (
        "R01",
        "Insufficient Funds",
        "ACH return R01: Insufficient Funds",
    )
    assert p["completed_at"] and p["ended_at"] and p["bank_account"]["account_last4"] == "0001"
    await assert_revenue(api, t, owed="90.00", held="0.00", paid_out="0.00", returned="25.00")
    events = await assert_events(stack, t, p)
    assert (events[-1]["data"]["return_code"], events[-1]["data"]["return_reason"]) == ("R01", "Insufficient Funds")
    assert events[-2]["data"]["to"] == "completed" and events[-2]["data"]["return_code"] is None


async def test_a_return_forced_by_the_simulator_r03_on_a_completed_payout(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")
    pid = (await ps.request(api, t, "25.00")).body["payout_id"]
    assert (await ps.approve(api, pid)).status == 200
    await ps.reaches(api, t, pid, "completed")
    await assert_revenue(api, t, owed="65.00", held="0.00", paid_out="25.00")
    order_id = (await admin_view(api, pid))["provider_payment_order_id"]
    returned = await sim(stack, "return", payment_order_id=order_id, code="R03")
    assert returned["status"] == "returned"
    p = await ps.reaches(api, t, pid, "returned")
    assert path(p) == [(None, "requested"), *PROVIDER_PATH, ("completed", "returned")]
    reason = "No Account/Unable to Locate Account"
    assert (p["return_code"], p["return_reason"], p["reason"]) == ("R03", reason, f"ACH return R03: {reason}")
    await assert_revenue(api, t, owed="90.00", held="0.00", paid_out="0.00", returned="25.00")
    await assert_events(stack, t, p)
    # Returned money is owed again, all of it available to a new payout.
    assert (await ps.request(api, t, "90.00")).status == 201
    await assert_revenue(api, t, owed="90.00", held="90.00", paid_out="0.00", returned="25.00")


# -- validation -----------------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"routing_number": "021000022"}, "INVALID_ROUTING_NUMBER", "routing_number"),  # checksum
    ({"routing_number": "02100002a"}, "INVALID_ROUTING_NUMBER", "routing_number"),
    ({"routing_number": "02100002"}, "INVALID_ROUTING_NUMBER", "routing_number"),
    ({"routing_number": "0210000210"}, "INVALID_ROUTING_NUMBER", "routing_number"),
    ({"account_number": "123"}, "INVALID_ACCOUNT_NUMBER", "account_number"),
    ({"account_number": "123456789012345678"}, "INVALID_ACCOUNT_NUMBER", "account_number"),
    ({"account_number": "98765432101a"}, "INVALID_ACCOUNT_NUMBER", "account_number"),
    ({"account_number": "9876 5432 1012"}, "INVALID_ACCOUNT_NUMBER", "account_number"),
    ({"account_number": "\uff19\uff18\uff17\uff16\uff15\uff14"}, "INVALID_ACCOUNT_NUMBER", "account_number"),
    ({"account_number": int(SECRET)}, "INVALID_ACCOUNT_NUMBER", "account_number"),  # a JSON number
    ({"account_type": "business"}, "INVALID_PARAMETER", "account_type"),
    ({"contact_email": "not-an-email"}, "INVALID_PARAMETER", "contact_email"),
    ({"account_holder_name": ""}, "INVALID_PARAMETER", "account_holder_name"),
    ({"account_holder_name": "   "}, "INVALID_PARAMETER", "account_holder_name"),
    ({"usd_amount": "0"}, "INVALID_AMOUNT", "usd_amount"),
    ({"usd_amount": "0.5"}, "INVALID_AMOUNT", "usd_amount"),  # under the 1.00 minimum
    ({"usd_amount": "1.001"}, "INVALID_AMOUNT", "usd_amount"),
    ({"usd_amount": "-1"}, "INVALID_AMOUNT", "usd_amount"),
]


async def test_a_bad_request_changes_nothing_and_never_echoes_the_account_number(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")
    for change, code, param in BAD:
        sent = {**ps.body("10.00", SECRET), **change}
        resp = await api.post("/api/payouts", key=t["sdk_key"], json=sent)
        assert_envelope(resp, 400, code)
        assert resp.body["param"] == param, (change, resp)
        number = str(sent["account_number"])
        assert number not in str(resp.body) and number.replace(" ", "") not in str(resp.body), (change, resp)
        assert SECRET not in str(resp.body)
    assert await listed(api, t) == []
    await assert_revenue(api, t, owed="90.00", held="0.00", paid_out="0.00")
    # The same details, fixed, are accepted; 1.00 is the minimum.
    assert (await ps.request(api, t, "10.00", SECRET)).status == 201
    assert (await ps.request(api, t, "1.00")).status == 201
    await assert_revenue(api, t, owed="90.00", held="11.00", paid_out="0.00")


# -- reading --------------------------------------------------------------------------------------


async def test_the_list_is_newest_first_filtered_and_paged(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")
    ids = [(await ps.request(api, t, f"{n}.00")).body["payout_id"] for n in range(1, 6)]
    newest = ids[::-1]
    everything = await listed(api, t)
    assert [x["payout_id"] for x in everything] == newest
    assert [x["usd_amount"] for x in everything] == ["5.00", "4.00", "3.00", "2.00", "1.00"]
    assert all("history" not in x and "duplicate" not in x for x in everything)

    pages: list[tuple[list[str], bool]] = []
    after = ""
    while True:
        resp = await api.get(f"/api/payouts?limit=2{after}", key=t["sdk_key"])
        assert resp.status == 200, resp
        pages.append(([x["payout_id"] for x in resp.body["data"]], resp.body["has_more"]))
        if not resp.body["has_more"]:
            break
        after = f"&starting_after={pages[-1][0][-1]}"
    assert pages == [(newest[0:2], True), (newest[2:4], True), (newest[4:], False)]

    assert (await cancel(api, t, ids[0])).status == 200
    assert (await ps.reject(api, ids[2], "not this one")).status == 200
    assert [x["payout_id"] for x in await listed(api, t, "?status=cancelled")] == [ids[0]]
    assert [x["payout_id"] for x in await listed(api, t, "?status=rejected")] == [ids[2]]
    assert [x["payout_id"] for x in await listed(api, t, "?status=requested")] == [ids[4], ids[3], ids[1]]
    assert await listed(api, t, "?status=completed") == []
    assert [x["payout_id"] for x in await listed(api, t, f"?status=requested&limit=1&starting_after={ids[4]}")] == [
        ids[3]
    ]
    for bad in ("?status=creating", "?status=bogus", "?limit=0", "?limit=101", "?starting_after=nope"):
        resp = await api.get(f"/api/payouts{bad}", key=t["sdk_key"])
        assert resp.status == 400 and resp.body["status"] == "error", (bad, resp)
    await assert_revenue(api, t, owed="90.00", held="11.00", paid_out="0.00")  # 5 + 4 + 2 still requested


async def test_two_tenants_see_only_their_own_and_operators_see_both(api: Api) -> None:
    a = await ps.earning_tenant(api, "1000")
    b = await ps.earning_tenant(api, "1000")
    shared = ps.key()  # an idempotency key is the tenant's own: the same one makes two payouts
    a_id = (await ps.request(api, a, "10.00", idempotency_key=shared)).body["payout_id"]
    b_made = await ps.request(api, b, "20.00", idempotency_key=shared)
    assert (b_made.status, b_made.body["duplicate"]) == (201, False), b_made
    b_id = b_made.body["payout_id"]
    # An operator asks for B on B's behalf; another must approve it.
    asker, checker = await ps.operator(api), await ps.operator(api)
    on_behalf = await ps.as_operator(
        api, asker, "POST", "/admin/payouts", json={**ps.body("5.00"), "tenant_id": b["tenant_id"]}
    )
    assert on_behalf.status == 201, on_behalf
    assert (on_behalf.body["tenant_id"], on_behalf.body["requested_by"]) == (
        b["tenant_id"],
        f"operator:{asker['operator_id']}",
    )
    b2_id = on_behalf.body["payout_id"]

    assert [x["payout_id"] for x in await listed(api, a)] == [a_id]
    assert [x["payout_id"] for x in await listed(api, b)] == [b2_id, b_id]
    for mine, theirs, other in ((a, b_id, b), (b, a_id, a)):
        assert_envelope(await api.get(f"/api/payouts/{theirs}", key=mine["sdk_key"]), 404, "PAYOUT_NOT_FOUND")
        assert_envelope(await cancel(api, mine, theirs), 404, "PAYOUT_NOT_FOUND")
        assert (await ps.payout(api, other, theirs))["status"] == "requested"
    nobody = "po_00000000000000000000000000"
    assert_envelope(await api.get(f"/api/payouts/{nobody}", key=a["sdk_key"]), 404, "PAYOUT_NOT_FOUND")
    assert_envelope(await api.get(f"/admin/payouts/{nobody}", admin=True), 404, "PAYOUT_NOT_FOUND")
    assert_envelope(await ps.approve(api, nobody, checker), 404, "PAYOUT_NOT_FOUND")
    sneaky = await api.get(f"/api/payouts?tenant_id={b['tenant_id']}", key=a["sdk_key"])
    assert sneaky.status == 400 or [x["payout_id"] for x in sneaky.body["data"]] == [a_id], sneaky
    await assert_revenue(api, a, owed="90.00", held="10.00", paid_out="0.00")
    await assert_revenue(api, b, owed="90.00", held="25.00", paid_out="0.00")

    every = await api.get("/admin/payouts?limit=100", admin=True)
    assert every.status == 200, every
    seen = {x["payout_id"]: x["tenant_id"] for x in every.body["data"]}
    assert {k: seen.get(k) for k in (a_id, b_id, b2_id)} == {
        a_id: a["tenant_id"],
        b_id: b["tenant_id"],
        b2_id: b["tenant_id"],
    }
    only_b = await api.get(f"/admin/payouts?tenant_id={b['tenant_id']}&status=requested", admin=True)
    assert [x["payout_id"] for x in only_b.body["data"]] == [b2_id, b_id]
    assert (await admin_view(api, a_id))["tenant_id"] == a["tenant_id"]
    assert (await admin_view(api, b_id))["tenant_id"] == b["tenant_id"]

    assert_envelope(await ps.approve(api, b2_id, asker), 403, "SELF_APPROVAL_FORBIDDEN")
    assert (await ps.approve(api, b2_id, checker)).status == 200
    assert (await ps.reject(api, b_id, "wrong account", checker)).status == 200
    assert (await ps.approve(api, a_id, checker)).status == 200
    await ps.reaches(api, a, a_id, "completed")
    await ps.reaches(api, b, b2_id, "completed")
    await assert_revenue(api, a, owed="80.00", held="0.00", paid_out="10.00")
    await assert_revenue(api, b, owed="85.00", held="0.00", paid_out="5.00")
    assert [x["status"] for x in await listed(api, b)] == ["completed", "rejected"]
    assert [x["status"] for x in await listed(api, a)] == ["completed"]
