"""INVO's review of payouts (`/admin/payouts`): maker-checker enforced by the payouts service, two
approvers above $10,000.00, the operators' roles, the errors of a review, and the queue.

An operator who asked for a payout on a tenant's behalf may not approve it; one who approved it
already may not approve it again; every decision is in the payout's history with its operator.
Only `finance` and `admin` move money; `viewer` and `support` read. After each test the ledger
check is clean.
"""

from __future__ import annotations

from typing import Any

from modern_treasury import AsyncModernTreasury

from devstack.stack import Stack
from tests import payouts_support as ps
from tests.helpers import Api, Response, assert_envelope

BOOTSTRAP = "op_bootstrap"
ADMIN_KEYS = {
    "payout_id",
    "status",
    "usd_amount",
    "contact_email",
    "bank_account",
    "approvals_required",
    "approvals_received",
    "reason",
    "return_code",
    "return_reason",
    "created_at",
    "updated_at",
    "approved_at",
    "completed_at",
    "ended_at",
    "tenant_id",
    "requested_by",
    "approvals",
    "provider_payment_order_id",
}


def source(op: dict[str, Any] | None) -> str:
    return f"operator:{op['operator_id'] if op is not None else BOOTSTRAP}"


async def ask(api: Api, op: dict[str, Any] | None, t: dict[str, Any], usd: str, **extra: Any) -> Response:
    """An operator asks for a payout on the tenant's behalf."""
    body = {**ps.body(usd, **extra), "tenant_id": t["tenant_id"]}
    return await ps.as_operator(api, op, "POST", "/admin/payouts", json=body)


async def admin_view(api: Api, payout_id: str, op: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = await ps.as_operator(api, op, "GET", f"/admin/payouts/{payout_id}")
    assert resp.status == 200, resp
    return dict(resp.body)


async def queue(api: Api, query: str, op: dict[str, Any] | None = None) -> tuple[list[str], bool]:
    resp = await ps.as_operator(api, op, "GET", f"/admin/payouts?{query}")
    assert resp.status == 200, resp
    return [p["payout_id"] for p in resp.body["data"]], resp.body["has_more"]


def transitions(p: dict[str, Any]) -> list[tuple[str | None, str, str, str]]:
    return [(h["from"], h["to"], h["source"], h["reason"]) for h in p["history"]]


def approvers(p: dict[str, Any]) -> list[str]:
    return [a["operator_id"] for a in p["approvals"]]


async def test_an_operator_who_asked_on_a_tenants_behalf_may_not_approve_it(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")  # $90.00 owed
    maker, checker = await ps.operator(api), await ps.operator(api)

    asked = await ask(api, maker, t, "30.00")
    assert asked.status == 201, asked
    p = asked.body
    assert set(p) == ADMIN_KEYS | {"history", "duplicate"}, sorted(p)
    assert (p["tenant_id"], p["requested_by"], p["status"], p["usd_amount"]) == (
        t["tenant_id"],
        source(maker),
        "requested",
        "30.00",
    )
    assert (p["approvals_required"], p["approvals_received"], p["approvals"]) == (1, 0, [])
    assert p["provider_payment_order_id"] is None and p["duplicate"] is False
    assert transitions(p) == [(None, "requested", source(maker), "")]
    # The partner sees the payout asked for them, held against their revenue.
    assert (await ps.payout(api, t, p["payout_id"]))["status"] == "requested"
    assert (await ps.revenue(api, t))["held_usd"] == "30.00"

    assert_envelope(await ps.approve(api, p["payout_id"], maker), 403, "SELF_APPROVAL_FORBIDDEN")
    still = await admin_view(api, p["payout_id"])
    assert (still["status"], still["approvals"], len(still["history"])) == ("requested", [], 1)

    approved = await ps.approve(api, p["payout_id"], checker)
    assert approved.status == 200, approved
    assert approvers(approved.body) == [checker["operator_id"]]
    assert approved.body["approved_at"] is not None
    assert (None, "requested", source(maker), "") == transitions(approved.body)[0]
    assert ("requested", "approved", source(checker), f"approved by {checker['operator_id']}") == transitions(
        approved.body
    )[1]
    done = await ps.reaches(api, t, p["payout_id"], "completed")
    assert [(h["from"], h["to"]) for h in done["history"]][2:] == [
        ("approved", "processing"),
        ("processing", "completed"),
    ]

    # The bootstrap token is an operator too: what it asked for, a named operator approves.
    by_bootstrap = await ask(api, None, t, "10.00")
    assert by_bootstrap.status == 201, by_bootstrap
    assert by_bootstrap.body["requested_by"] == source(None)
    assert_envelope(await ps.approve(api, by_bootstrap.body["payout_id"]), 403, "SELF_APPROVAL_FORBIDDEN")
    assert (await ps.approve(api, by_bootstrap.body["payout_id"], maker)).status == 200
    await ps.reaches(api, t, by_bootstrap.body["payout_id"], "completed")

    await ps.revenue_reaches(api, t, owed="50.00", held="0.00", paid_out="40.00")
    events = await ps.status_events(stack, t["tenant_id"], p["payout_id"], 4)
    assert [(e["data"]["from"], e["data"]["to"]) for e in events] == [
        (None, "requested"),
        ("requested", "approved"),
        ("approved", "processing"),
        ("processing", "completed"),
    ]
    await ps.check_ledger(api)


async def test_a_payout_above_ten_thousand_dollars_needs_two_different_approvers(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "200000")  # $18,000.00 owed
    first, second = await ps.operator(api), await ps.operator(api)
    asked = await ps.request(api, t, "10000.01")
    assert asked.status == 201, asked
    pid = asked.body["payout_id"]
    assert (asked.body["approvals_required"], asked.body["approvals_received"]) == (2, 0)

    one = await ps.approve(api, pid, first)
    assert one.status == 200, one
    assert (one.body["status"], one.body["approvals_received"], approvers(one.body)) == (
        "requested",
        1,
        [first["operator_id"]],
    )
    assert one.body["approved_at"] is None and one.body["provider_payment_order_id"] is None
    assert transitions(one.body)[-1] == ("requested", "requested", source(first), "approval 1 of 2")

    assert_envelope(await ps.approve(api, pid, first), 409, "ALREADY_APPROVED_BY_OPERATOR")
    assert (await admin_view(api, pid))["approvals_received"] == 1
    assert (await ps.revenue(api, t))["held_usd"] == "10000.01"

    two = await ps.approve(api, pid, second)
    assert two.status == 200, two
    assert two.body["status"] != "requested" and two.body["approvals_received"] == 2
    done = await ps.reaches(api, t, pid, "completed")
    assert [(h["from"], h["to"], h["source"], h["reason"]) for h in done["history"][:3]] == [
        (None, "requested", "partner", ""),
        ("requested", "requested", source(first), "approval 1 of 2"),
        ("requested", "approved", source(second), f"approved by {first['operator_id']}, {second['operator_id']}"),
    ]
    view = await admin_view(api, pid)
    assert approvers(view) == [first["operator_id"], second["operator_id"]]
    assert all(a["at"] for a in view["approvals"])
    await ps.revenue_reaches(api, t, owed="7999.99", held="0.00", paid_out="10000.01")
    # The first approval moved nothing: no event for it.
    events = await ps.status_events(stack, t["tenant_id"], pid, 4)
    assert [(e["data"]["from"], e["data"]["to"]) for e in events] == [
        (None, "requested"),
        ("requested", "approved"),
        ("approved", "processing"),
        ("processing", "completed"),
    ]

    # Exactly $10,000.00 is not above the threshold: one approver (the bootstrap token) suffices.
    u = await ps.earning_tenant(api, "200000")
    at = await ps.request(api, u, "10000.00")
    assert at.status == 201 and at.body["approvals_required"] == 1, at
    alone = await ps.approve(api, at.body["payout_id"])
    assert alone.status == 200 and alone.body["status"] != "requested", alone
    assert approvers(alone.body) == [BOOTSTRAP]
    settled = await ps.reaches(api, u, at.body["payout_id"], "completed")
    assert not [h for h in settled["history"] if "approval 1 of" in h["reason"]]
    await ps.revenue_reaches(api, u, paid_out="10000.00")
    await ps.check_ledger(api)


async def test_viewers_and_support_read_payouts_but_only_finance_moves_them(api: Api) -> None:
    t = await ps.earning_tenant(api, "1000")  # $90.00 owed
    viewer, support = await ps.operator(api, "viewer"), await ps.operator(api, "support")
    finance, other = await ps.operator(api, "finance"), await ps.operator(api, "finance")
    p = (await ps.request(api, t, "20.00")).body["payout_id"]
    q = (await ps.request(api, t, "10.00")).body["payout_id"]

    for op in (viewer, support):
        assert (await queue(api, f"tenant_id={t['tenant_id']}", op))[0] == [q, p]
        assert (await admin_view(api, p, op))["status"] == "requested"
        assert_envelope(await ps.approve(api, p, op), 403, "OPERATOR_ROLE_FORBIDDEN")
        assert_envelope(await ps.reject(api, q, "not for you to say", op), 403, "OPERATOR_ROLE_FORBIDDEN")
        assert_envelope(await ask(api, op, t, "5.00"), 403, "OPERATOR_ROLE_FORBIDDEN")
    view = await admin_view(api, p)
    assert (view["status"], view["approvals"], len(view["history"])) == ("requested", [], 1)
    assert (await queue(api, f"tenant_id={t['tenant_id']}"))[0] == [q, p]  # nothing asked
    assert (await ps.revenue(api, t))["held_usd"] == "30.00"

    # An SDK key never opens /admin/payouts, in its own header or as a bearer token.
    assert_envelope(await api.get("/admin/payouts", key=t["sdk_key"]), 401, "MISSING_ADMIN_TOKEN")
    assert_envelope(await api.post(f"/admin/payouts/{p}/approve", key=t["sdk_key"]), 401, "MISSING_ADMIN_TOKEN")
    bearer = {"Authorization": f"Bearer {t['sdk_key']}"}
    assert_envelope(await api.get(f"/admin/payouts/{p}", headers=bearer), 401, "INVALID_ADMIN_TOKEN")
    assert (await admin_view(api, p))["approvals"] == []

    # Finance may ask, approve and reject.
    asked = await ask(api, finance, t, "5.00")
    assert asked.status == 201, asked
    assert (await ps.approve(api, p, finance)).status == 200
    rejected = await ps.reject(api, q, "Wrong bank account.", other)
    assert rejected.status == 200 and rejected.body["status"] == "rejected", rejected
    assert transitions(rejected.body)[-1] == ("requested", "rejected", source(other), "Wrong bank account.")
    assert (await ps.approve(api, asked.body["payout_id"], other)).status == 200
    await ps.reaches(api, t, p, "completed")
    await ps.reaches(api, t, asked.body["payout_id"], "completed")
    rev = await ps.revenue(api, t)
    assert (rev["owed_usd"], rev["held_usd"], rev["paid_out_usd"], rev["available_usd"]) == (
        "65.00",
        "0.00",
        "25.00",
        "65.00",
    )
    await ps.check_ledger(api)


async def test_a_rejection_needs_a_reason_and_only_a_requested_payout_is_reviewed(api: Api, stack: Stack) -> None:
    t = await ps.earning_tenant(api, "1000")  # $90.00 owed
    pid = (await ps.request(api, t, "40.00")).body["payout_id"]
    no_body = await ps.as_operator(api, None, "POST", f"/admin/payouts/{pid}/reject")
    assert no_body.status == 400, no_body
    empty = await ps.as_operator(api, None, "POST", f"/admin/payouts/{pid}/reject", json={})
    assert_envelope(empty, 400, "MISSING_PARAMETER")
    assert empty.body.get("param") == "reason", empty
    blank = await ps.reject(api, pid, "   ")
    assert blank.status == 400 and blank.body["error_code"] in ("MISSING_PARAMETER", "INVALID_PARAMETER"), blank
    assert (await admin_view(api, pid))["status"] == "requested"

    rejected = await ps.reject(api, pid, "  The account is not on the agreement.  ")
    assert rejected.status == 200, rejected
    r = rejected.body
    assert (r["status"], r["reason"], r["approvals"]) == ("rejected", "The account is not on the agreement.", [])
    assert r["ended_at"] is not None and r["approved_at"] is None
    assert transitions(r)[-1] == ("requested", "rejected", source(None), "The account is not on the agreement.")
    rev = await ps.revenue(api, t)
    assert (rev["owed_usd"], rev["held_usd"], rev["available_usd"], rev["paid_out_usd"]) == (
        "90.00",
        "0.00",
        "90.00",
        "0.00",
    )
    events = await ps.status_events(stack, t["tenant_id"], pid, 2)
    assert [(e["data"]["from"], e["data"]["to"], e["data"]["reason"]) for e in events] == [
        (None, "requested", None),
        ("requested", "rejected", "The account is not on the agreement."),
    ]

    # Once decided, no review changes it.
    for resp in (await ps.approve(api, pid), await ps.reject(api, pid, "again")):
        assert_envelope(resp, 409, "PAYOUT_NOT_PENDING_REVIEW")
        assert resp.body["payout_status"] == "rejected", resp
    cancelled = (await ps.request(api, t, "5.00")).body["payout_id"]
    assert (await api.post(f"/api/payouts/{cancelled}/cancel", key=t["sdk_key"])).status == 200
    assert_envelope(await ps.approve(api, cancelled), 409, "PAYOUT_NOT_PENDING_REVIEW")
    paid = (await ps.request(api, t, "6.00")).body["payout_id"]
    assert (await ps.approve(api, paid)).status == 200
    await ps.reaches(api, t, paid, "completed")
    assert_envelope(await ps.approve(api, paid, await ps.operator(api)), 409, "PAYOUT_NOT_PENDING_REVIEW")
    assert_envelope(await ps.reject(api, paid, "too late"), 409, "PAYOUT_NOT_PENDING_REVIEW")
    assert (await admin_view(api, paid))["status"] == "completed"

    # An unknown payout, well formed or not.
    for unknown in ("po_" + "0" * 26, "po_nope"):
        assert_envelope(await ps.approve(api, unknown), 404, "PAYOUT_NOT_FOUND")
        assert_envelope(await ps.reject(api, unknown, "no such thing"), 404, "PAYOUT_NOT_FOUND")
        assert_envelope(await api.get(f"/admin/payouts/{unknown}", admin=True), 404, "PAYOUT_NOT_FOUND")
    rev = await ps.revenue(api, t)
    assert (rev["owed_usd"], rev["held_usd"], rev["paid_out_usd"]) == ("84.00", "0.00", "6.00")
    await ps.check_ledger(api)


async def _provider_order(stack: Stack, order_id: str) -> dict[str, Any]:
    """The payment order as the ACH simulator has it, read through Modern Treasury's SDK."""
    async with AsyncModernTreasury(
        organization_id=stack.env["INVO_ACH_ORGANIZATION_ID"],
        api_key=stack.env["INVO_ACH_API_KEY"],
        base_url=stack.env["INVO_ACH_API_BASE"],
        max_retries=0,
    ) as client:
        return dict((await client.payment_orders.retrieve(order_id)).to_dict())


async def test_the_queue_filters_by_status_and_tenant_and_pages(api: Api, stack: Stack) -> None:
    t, u = await ps.earning_tenant(api, "1000"), await ps.earning_tenant(api, "200000")
    a, b, c = [(await ps.request(api, t, usd)).body["payout_id"] for usd in ("1.00", "2.00", "3.00")]
    d = (await ps.request(api, u, "10000.01")).body["payout_id"]  # two approvers
    first = await ps.operator(api)
    assert (await ps.approve(api, d, first)).status == 200
    assert (await ps.approve(api, a)).status == 200
    assert (await ps.reject(api, b, "duplicate request")).status == 200
    await ps.reaches(api, t, a, "completed")

    tid = t["tenant_id"]
    assert await queue(api, f"status=requested&tenant_id={tid}") == ([c], False)
    assert await queue(api, f"tenant_id={tid}") == ([c, b, a], False)
    assert await queue(api, f"tenant_id={tid}&limit=2") == ([c, b], True)
    assert await queue(api, f"tenant_id={tid}&limit=2&starting_after={b}") == ([a], False)
    assert await queue(api, f"status=completed&tenant_id={tid}") == ([a], False)
    assert await queue(api, f"status=rejected&tenant_id={tid}") == ([b], False)
    half = await ps.as_operator(api, None, "GET", f"/admin/payouts?status=requested&tenant_id={u['tenant_id']}")
    assert [p["payout_id"] for p in half.body["data"]] == [d], half
    # The queue shows the first of two approvals, as the payout itself does.
    assert (approvers(half.body["data"][0]), half.body["data"][0]["approvals_received"]) == (
        [first["operator_id"]],
        1,
    ), half.body["data"][0]
    everyone = await ps.as_operator(api, None, "GET", "/admin/payouts?status=requested&limit=100")
    assert everyone.status == 200, everyone
    ids = [p["payout_id"] for p in everyone.body["data"]]
    assert {c, d} <= set(ids) and not {a, b} & set(ids)
    assert {p["status"] for p in everyone.body["data"]} == {"requested"}
    assert ids == sorted(ids, reverse=True)  # newest first

    listed = (await ps.as_operator(api, None, "GET", f"/admin/payouts?tenant_id={tid}")).body["data"]
    by_id = {p["payout_id"]: p for p in listed}
    assert all(set(p) == ADMIN_KEYS for p in listed), listed  # no history in a list
    assert {p["tenant_id"] for p in listed} == {tid} and {p["requested_by"] for p in listed} == {"partner"}
    assert by_id[c]["provider_payment_order_id"] is None and by_id[b]["provider_payment_order_id"] is None
    assert (approvers(by_id[a]), by_id[a]["approvals_received"]) == ([BOOTSTRAP], 1), by_id[a]
    assert (by_id[c]["approvals"], by_id[c]["approvals_received"]) == ([], 0)
    assert by_id[a]["bank_account"]["account_last4"] == "6789" and ps.COMPLETES not in str(listed)
    order_id = by_id[a]["provider_payment_order_id"]
    assert isinstance(order_id, str) and order_id
    order = await _provider_order(stack, order_id)
    assert (order["metadata"]["payout_id"], order["amount"], order["status"]) == (a, 100, "completed")
    assert (await admin_view(api, a))["provider_payment_order_id"] == order_id

    for query, param in (("status=pending", "status"), ("limit=0", "limit"), ("tenant_id=not%20a%20tenant", None)):
        bad = await ps.as_operator(api, None, "GET", f"/admin/payouts?{query}")
        assert bad.status == 400, (query, bad)
        if param is not None:
            assert bad.body.get("param") == param, (query, bad)
    assert (await ps.reject(api, d, "not this quarter")).status == 200
    await ps.check_ledger(api)
