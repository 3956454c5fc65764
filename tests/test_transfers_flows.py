"""Both transfer flows step by step through the gateway: every answer's fields, the texts, what each
tenant sees (GET, the list, its ledger entries, its events), cancels, and tenant isolation on every
transfer route. The money (fee overrides, rounding, refused amounts, a sender short of funds or in
debt, replays that must not move it twice) is in test_transfers_money.py."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from devstack.stack import Stack
from tests import transfers_support as ts
from tests.helpers import Api, Response, assert_envelope

TRANSFER_KEYS = {
    "transfer_id", "type", "status", "role", "source_tenant_id", "destination_tenant_id", "sender_email",
    "recipient_email", "sender_phone", "recipient_phone", "amount", "fee_breakdown", "total_debited", "new_balance",
    "pin_attempts_remaining", "pin_sends_remaining", "pin_expires_at", "verification_expires_at", "claim_expires_at",
    "end_reason", "hold_transaction_id", "transaction_id", "metadata", "created_at", "updated_at", "verified_at",
    "completed_at", "ended_at",
}  # fmt: skip
PUBLIC_STATUSES = {"pending_verification", "claimable", "claiming", "completed", "returning", "cancelled", "expired"}
FEE_100 = {"source_tenant": "3.50", "destination_tenant": "3.50", "network": "3", "total": "10"}
TRANSFER_ID = re.compile(r"^trf_[0-9A-Z]{26}$")


def seconds_between(a: str, b: str) -> float:
    at = datetime.datetime.strptime
    return (at(b, "%Y-%m-%dT%H:%M:%SZ") - at(a, "%Y-%m-%dT%H:%M:%SZ")).total_seconds()


def masked(e164: str) -> str:
    """How a US number is shown: country code, area code, the last four digits."""
    return f"{e164[:5]}•••{e164[-4:]}"


def no_code_in(body: Any) -> bool:
    return ts.CODE_RE.search(json.dumps(body, ensure_ascii=False)) is None


def ok(resp: Response, status: int = 200) -> dict[str, Any]:
    assert resp.status == status, resp
    return dict(resp.body)


async def listed(api: Api, t: dict[str, Any], query: str = "") -> tuple[list[str], bool, list[dict[str, Any]]]:
    resp = await api.get(f"/api/transfers?{query}", key=t["sdk_key"])
    assert resp.status == 200, resp
    return [x["transfer_id"] for x in resp.body["data"]], resp.body["has_more"], resp.body["data"]


async def entries(api: Api, t: dict[str, Any], *txns: str) -> set[tuple[Any, ...]]:
    """The tenant's ledger entries of these transactions, as (txn, account, player, amount, balance_after, kind)."""
    out: set[tuple[Any, ...]] = set()
    cursor = ""
    while True:
        resp = await api.get(f"/api/ledger/entries?limit=100{cursor}", key=t["sdk_key"])
        assert resp.status == 200, resp
        for e in resp.body["data"]:
            if e["transaction_id"] in txns:
                row = (e["transaction_id"], e["account"], e.get("player_email"), e["amount"], e["balance_after"])
                out.add((*row, e["kind"]))
        if not resp.body["has_more"]:
            return out
        cursor = f"&cursor={resp.body['next_cursor']}"


def event_data(got: dict[str, Any], role: str, **data: Any) -> dict[str, Any]:
    """The exact data of a transfer event to one tenant about the transfer `got` (a GET answer)."""
    return {
        "transfer_id": got["transfer_id"],
        "transfer_type": got["type"],
        "status": got["status"],
        "role": role,
        "source_tenant_id": got["source_tenant_id"],
        "destination_tenant_id": got["destination_tenant_id"],
        "amount": got["amount"],
        "fee_total": got["fee_breakdown"]["total"],
        "transaction_id": got["transaction_id"],
        "reason": got["end_reason"],
        "created_at": got["created_at"],
        "ended_at": got["ended_at"],
        **data,
    }


async def one_event(stack: Stack, t: dict[str, Any], transfer_id: str, event_type: str) -> dict[str, Any]:
    (event,) = await ts.transfer_events(stack, t["tenant_id"], transfer_id)
    assert (event["event_type"], event["tenant_id"]) == (event_type, t["tenant_id"]), event
    return dict(event["data"])


# -- a self-transfer, step by step -----------------------------------------------------------------


async def test_a_self_transfer_step_by_step(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player, there, sender_phone = ts.email(), ts.email(), ts.phone()
    await ts.fund(api, src, player, "200")

    started = ok(await ts.initiate_transfer(api, src, dst, player, "100", sender_phone, metadata={"order": "o-1"}), 201)
    assert set(started) == TRANSFER_KEYS | {"duplicate"}, started
    tid = started["transfer_id"]
    assert TRANSFER_ID.match(tid), tid
    assert {k: started[k] for k in TRANSFER_KEYS - {"transfer_id", "hold_transaction_id"} if not k.endswith("_at")} == {
        "type": "self_transfer",
        "status": "pending_verification",
        "role": "source",
        "source_tenant_id": src["tenant_id"],
        "destination_tenant_id": dst["tenant_id"],
        "sender_email": player,
        "recipient_email": None,
        "sender_phone": masked(sender_phone),
        "recipient_phone": None,
        "amount": "100",
        "fee_breakdown": FEE_100,
        "total_debited": "110",
        "new_balance": "90",
        "pin_attempts_remaining": 5,
        "pin_sends_remaining": 2,
        "end_reason": None,
        "transaction_id": None,
        "metadata": {"order": "o-1"},
    }
    assert started["hold_transaction_id"] and started["duplicate"] is False
    assert {started[k] for k in ("claim_expires_at", "verified_at", "completed_at", "ended_at")} == {None}
    assert 598 <= seconds_between(started["created_at"], started["pin_expires_at"]) <= 602, started
    assert 1799 <= seconds_between(started["created_at"], started["verification_expires_at"]) <= 1801, started
    assert sender_phone not in json.dumps(started) and sender_phone[2:] not in json.dumps(started)
    assert "claim_code" not in started and no_code_in(started)
    assert await ts.balance(api, src, player) == "90"

    # The PIN, texted to the sender's phone only.
    (pin_text,) = await ts.texts(api, sender_phone)
    pin = await ts.pin_of(api, sender_phone)
    assert pin_text.startswith(f"{pin} is your INVO transfer PIN. It expires in 10 minutes."), pin_text
    assert no_code_in(pin_text)

    # The destination sees it from the start, its own side only, without a code.
    early = ok(await ts.get(api, dst, tid))
    assert (early["role"], early["status"], early["sender_email"], early["recipient_email"]) == (
        "destination", "pending_verification", None, None,
    )  # fmt: skip
    assert (early["sender_phone"], early["metadata"], early["hold_transaction_id"], early["new_balance"]) == (
        None, None, None, None,
    )  # fmt: skip
    assert early["pin_attempts_remaining"] is None and no_code_in(early)

    verified = ok(await ts.verify(api, src, tid, pin))
    code = verified["claim_code"]
    assert ts.CODE_RE.fullmatch(code), verified
    assert (verified["status"], verified["role"], verified["new_balance"], verified["fee_breakdown"]) == (
        "claimable", "source", "90", FEE_100,
    )  # fmt: skip
    assert verified["verified_at"] is not None and verified["completed_at"] is None
    assert 24 * 3600 - 1 <= seconds_between(verified["verified_at"], verified["claim_expires_at"]) <= 24 * 3600 + 1
    assert (verified["pin_attempts_remaining"], verified["pin_sends_remaining"], verified["pin_expires_at"]) == (
        None, None, None,
    )  # fmt: skip
    # ... and texted to the sender's own phone, naming the amount and the source's currency.
    assert await ts.code_of(api, sender_phone) == code
    claim_text = (await ts.texts(api, sender_phone))[0]
    assert "100 Coins 0" in claim_text and player not in claim_text
    assert no_code_in(ok(await ts.get(api, src, tid)))  # answered once, never again

    claimed = ok(await ts.claim(api, dst, code, there))
    assert (claimed["status"], claimed["role"], claimed["recipient_email"], claimed["new_balance"]) == (
        "completed", "destination", there, "100",
    )  # fmt: skip
    assert (claimed["sender_email"], claimed["sender_phone"], claimed["metadata"], claimed["duplicate"]) == (
        None, None, None, False,
    )  # fmt: skip
    assert claimed["hold_transaction_id"] is None and claimed["transaction_id"] and claimed["completed_at"]
    assert claimed["fee_breakdown"] == FEE_100 and claimed["total_debited"] == "110"
    assert await ts.balance(api, dst, there) == "100"
    assert await ts.balance(api, src, player) == "90"

    # Each tenant reads its own side.
    mine = ok(await ts.get(api, src, tid))
    theirs = ok(await ts.get(api, dst, tid))
    assert (mine["role"], mine["sender_email"], mine["recipient_email"], mine["new_balance"]) == (
        "source", player, there, "90",
    )  # fmt: skip
    assert (mine["metadata"], mine["hold_transaction_id"]) == ({"order": "o-1"}, started["hold_transaction_id"])
    assert (theirs["role"], theirs["recipient_email"], theirs["new_balance"]) == ("destination", there, "100")
    for hidden in ("sender_email", "sender_phone", "metadata", "hold_transaction_id"):
        assert theirs[hidden] is None, (hidden, theirs)
    assert player not in json.dumps(theirs) and sender_phone[2:] not in json.dumps(theirs)
    assert mine["transaction_id"] == theirs["transaction_id"] == claimed["transaction_id"]
    for got in (mine, theirs):
        assert got["status"] == "completed" and got["completed_at"] == got["ended_at"] is not None
        moves = [(h["from"], h["to"]) for h in got["history"]]
        assert [to for _, to in moves] == ["pending_verification", "claimable", "claiming", "completed"], moves
        assert [f for f, _ in moves][1:] == ["pending_verification", "claimable", "claiming"], moves
        assert no_code_in(got)

    # The events: each tenant its own side and its own share of the fee.
    assert await one_event(stack, src, tid, "transfer.completed") == event_data(
        mine, "source", player_email=player, fee_share="3.50", new_balance=None
    )
    assert await one_event(stack, dst, tid, "transfer.completed") == event_data(
        mine, "destination", player_email=there, fee_share="3.50", new_balance="100"
    )

    # The ledger: the source sees the sender's hold and its share; the destination the credit and its share.
    hold, settle = started["hold_transaction_id"], mine["transaction_id"]
    assert await entries(api, src, hold, settle) == {
        (hold, "player", player, "-110", "90", "transfer_hold"),
        (hold, "transfers_held", None, "110", None, "transfer_hold"),
        (settle, "transfers_held", None, "-110", None, "transfer_settle"),
        (settle, "revenue", None, "3.50", "3.50", "transfer_settle"),
        (settle, "network_fee", None, "3", None, "transfer_settle"),
    }
    assert await entries(api, dst, hold, settle) == {
        (settle, "player", there, "100", "100", "transfer_settle"),
        (settle, "revenue", None, "3.50", "3.50", "transfer_settle"),
    }
    await ts.check_ledger(api)
    # `creating` is internal (store.py: "never shown"; not a status the list accepts): nor does the history show it.
    for got in (mine, theirs):
        assert all(h["from"] in PUBLIC_STATUSES | {None} for h in got["history"]), got["history"]


# -- a send, step by step ----------------------------------------------------------------------------


async def test_a_send_step_by_step_its_code_only_on_the_recipients_phone(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player, there = ts.email(), ts.email()
    sender_phone, recipient_phone = ts.phone(), ts.phone()
    await ts.fund(api, src, player, "60")
    answers: list[Any] = []

    started = ok(await ts.initiate_send(api, src, player, "50", sender_phone, recipient_phone), 201)
    answers.append(started)
    tid = started["transfer_id"]
    assert (started["type"], started["status"], started["role"], started["destination_tenant_id"]) == (
        "send", "pending_verification", "source", None,
    )  # fmt: skip
    assert (started["sender_phone"], started["recipient_phone"]) == (masked(sender_phone), masked(recipient_phone))
    assert (started["amount"], started["total_debited"], started["new_balance"]) == ("50", "55", "5")
    assert started["fee_breakdown"] == {
        "source_tenant": "1.75", "destination_tenant": "1.75", "network": "1.50", "total": "5",
    }  # fmt: skip
    assert (started["pin_attempts_remaining"], started["pin_sends_remaining"]) == (5, 2)
    assert await ts.texts(api, recipient_phone) == []  # nothing until the PIN is right

    verified = ok(await ts.verify(api, src, tid, await ts.pin_of(api, sender_phone)))
    answers.append(verified)
    assert verified["claim_code"] is None and verified["status"] == "claimable"
    assert 14 * 86400 - 1 <= seconds_between(verified["verified_at"], verified["claim_expires_at"]) <= 14 * 86400 + 1
    code = await ts.code_of(api, recipient_phone)
    (gift,) = await ts.texts(api, recipient_phone)
    assert "you were sent 50 Coins 0" in gift and player not in gift, gift
    answers.append(ok(await ts.get(api, src, tid)))
    answers.append((await listed(api, src))[2])
    assert_envelope(await ts.get(api, dst, tid), 404, "TRANSFER_NOT_FOUND")  # nobody's destination yet

    # Any other tenant the recipient plays in claims it, with claim-currency (not claim-transfer).
    assert_envelope(await ts.claim(api, dst, code, there), 409, "CLAIM_KIND_MISMATCH")
    claimed = ok(await ts.claim(api, dst, code, there, send=True))
    answers.append(claimed)
    assert (claimed["status"], claimed["role"], claimed["destination_tenant_id"], claimed["recipient_email"]) == (
        "completed", "destination", dst["tenant_id"], there,
    )  # fmt: skip
    assert (claimed["new_balance"], claimed["sender_email"], claimed["sender_phone"]) == ("50", None, None)
    assert claimed["recipient_phone"] is None  # the recipient's number is the source's to know
    assert await ts.balance(api, dst, there) == "50"
    assert await ts.balance(api, src, player) == "5"

    mine = ok(await ts.get(api, src, tid))
    theirs = ok(await ts.get(api, dst, tid))
    answers += [mine, theirs, (await listed(api, src))[2], (await listed(api, dst))[2]]
    assert (mine["recipient_email"], mine["destination_tenant_id"], mine["status"]) == (
        there, dst["tenant_id"], "completed",
    )  # fmt: skip
    assert (theirs["role"], theirs["sender_email"], theirs["metadata"]) == ("destination", None, None)

    # The code: on the recipient's phone only; never the sender's, never in any answer to either tenant.
    assert all(code not in text for text in await ts.texts(api, sender_phone))
    for answer in answers:
        assert code not in json.dumps(answer) and no_code_in(answer), answer

    assert await one_event(stack, src, tid, "transfer.completed") == event_data(
        mine, "source", player_email=player, fee_share="1.75", new_balance=None
    )
    assert await one_event(stack, dst, tid, "transfer.completed") == event_data(
        mine, "destination", player_email=there, fee_share="1.75", new_balance="50"
    )
    await ts.check_ledger(api)


# -- cancel ------------------------------------------------------------------------------------------------


async def test_cancel_while_waiting_for_the_pin_gives_everything_back(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player, sender_phone = ts.email(), ts.phone()
    await ts.fund(api, src, player, "110")
    tid = ok(await ts.initiate_transfer(api, src, dst, player, "100", sender_phone), 201)["transfer_id"]
    pin = await ts.pin_of(api, sender_phone)
    assert await ts.balance(api, src, player) == "0"

    assert_envelope(await ts.cancel(api, dst, tid), 403, "NOT_TRANSFER_SOURCE")
    cancelled = ok(await ts.cancel(api, src, tid))
    assert (cancelled["status"], cancelled["end_reason"], cancelled["new_balance"], cancelled["duplicate"]) == (
        "cancelled", "cancelled_by_tenant", "110", False,
    )  # fmt: skip
    assert cancelled["transaction_id"] and cancelled["ended_at"] and cancelled["completed_at"] is None
    assert await ts.balance(api, src, player) == "110"  # amount and fee, whole
    again = ok(await ts.cancel(api, src, tid))
    assert (again["duplicate"], again["status"], again["transaction_id"]) == (
        True, "cancelled", cancelled["transaction_id"],
    )  # fmt: skip
    assert_envelope(await ts.verify(api, src, tid, pin), 409, "TRANSFER_CANCELLED")
    assert_envelope(await ts.resend(api, src, tid), 409, "TRANSFER_CANCELLED")
    assert await ts.balance(api, src, player) == "110"

    got = ok(await ts.get(api, src, tid))
    assert [(h["to"], h["reason"]) for h in got["history"]][-2:] == [
        ("returning", "cancelled_by_tenant"), ("cancelled", "cancelled_by_tenant"),
    ]  # fmt: skip
    assert await one_event(stack, src, tid, "transfer.cancelled") == event_data(
        got, "source", player_email=player, fee_share="0", new_balance="110"
    )
    assert await one_event(stack, dst, tid, "transfer.cancelled") == event_data(
        got, "destination", player_email=None, fee_share="0", new_balance=None
    )
    await ts.check_ledger(api)


async def test_cancel_of_a_claimable_transfer_then_a_claim_is_refused(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "30")
    tid, code, _ = await ts.self_transfer_to_claimable(api, src, dst, player, "20")
    assert await ts.balance(api, src, player) == "8"

    assert_envelope(await ts.cancel(api, dst, tid), 403, "NOT_TRANSFER_SOURCE")
    cancelled = ok(await ts.cancel(api, src, tid))
    assert (cancelled["status"], cancelled["new_balance"]) == ("cancelled", "30")
    assert await ts.balance(api, src, player) == "30"
    assert_envelope(await ts.claim(api, dst, code, there), 409, "TRANSFER_CANCELLED")
    assert await ts.balance(api, dst, there) == "0"
    assert ok(await ts.cancel(api, src, tid))["duplicate"] is True

    got = ok(await ts.get(api, src, tid))
    assert await one_event(stack, src, tid, "transfer.cancelled") == event_data(
        got, "source", player_email=player, fee_share="0", new_balance="30"
    )
    assert await one_event(stack, dst, tid, "transfer.cancelled") == event_data(
        got, "destination", player_email=None, fee_share="0", new_balance=None
    )

    # A send cancelled while claimable: its code no longer pays out, and only the source hears of it.
    sid, send_code, _, _ = await ts.send_to_claimable(api, src, player, "10")
    assert await ts.balance(api, src, player) == "19"
    assert ok(await ts.cancel(api, src, sid))["status"] == "cancelled"
    assert await ts.balance(api, src, player) == "30"
    assert_envelope(await ts.claim(api, dst, send_code, there, send=True), 409, "TRANSFER_CANCELLED")
    data = await one_event(stack, src, sid, "transfer.cancelled")
    assert (data["destination_tenant_id"], data["fee_share"], data["new_balance"]) == (None, "0", "30"), data
    await ts.check_ledger(api)


async def test_a_completed_transfer_cannot_be_cancelled(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "11")
    tid, code, _ = await ts.self_transfer_to_claimable(api, src, dst, player, "10")
    assert ok(await ts.claim(api, dst, code, there))["status"] == "completed"
    assert_envelope(await ts.cancel(api, src, tid), 409, "TRANSFER_ALREADY_CLAIMED")
    assert_envelope(await ts.cancel(api, dst, tid), 403, "NOT_TRANSFER_SOURCE")
    assert (await ts.balance(api, src, player), await ts.balance(api, dst, there)) == ("0", "10")
    await ts.check_ledger(api)


# -- tenant isolation and the list -----------------------------------------------------------------------


async def test_a_third_tenant_finds_nothing_on_any_route(api: Api) -> None:
    a, b, c = await ts.tenants(api, 3)
    player, there = ts.email(), ts.email()
    await ts.fund(api, a, player, "100")
    pending = ok(await ts.initiate_transfer(api, a, b, player, "10", ts.phone()), 201)["transfer_id"]
    send_id, send_code, _, _ = await ts.send_to_claimable(api, a, player, "10")
    done, code, _ = await ts.self_transfer_to_claimable(api, a, b, player, "10")
    assert_envelope(await ts.claim(api, c, code, there), 403, "NOT_TRANSFER_DESTINATION")
    ok(await ts.claim(api, b, code, there))
    ok(await ts.claim(api, b, send_code, there, send=True))

    for tid in (pending, send_id, done, "trf_" + "0" * 26):
        assert_envelope(await ts.get(api, c, tid), 404, "TRANSFER_NOT_FOUND")
        assert_envelope(await ts.cancel(api, c, tid), 404, "TRANSFER_NOT_FOUND")
        assert_envelope(await ts.verify(api, c, tid, "123456"), 404, "TRANSFER_NOT_FOUND")
        assert_envelope(await ts.resend(api, c, tid), 404, "TRANSFER_NOT_FOUND")
    # The destination reads its transfers but never verifies or resends their PINs.
    assert_envelope(await ts.verify(api, b, pending, "123456"), 404, "TRANSFER_NOT_FOUND")
    assert_envelope(await ts.resend(api, b, pending), 404, "TRANSFER_NOT_FOUND")
    assert ok(await ts.get(api, b, pending))["role"] == "destination"
    assert (await listed(api, c)) == ([], False, [])
    # What c tried changed nothing.
    assert ok(await ts.get(api, a, pending))["status"] == "pending_verification"
    assert ok(await ts.get(api, a, pending))["pin_attempts_remaining"] == 5
    await ts.check_ledger(api)


async def test_the_list_is_newest_first_paginated_and_filtered_for_each_side(api: Api) -> None:
    a, b = await ts.tenants(api)
    player, there = ts.email(), ts.email()
    await ts.fund(api, a, player, "100")
    await ts.fund(api, b, there, "100")
    t1, code, _ = await ts.self_transfer_to_claimable(api, a, b, player, "10")
    ok(await ts.claim(api, b, code, there))
    t2 = ok(await ts.initiate_transfer(api, a, b, player, "10", ts.phone()), 201)["transfer_id"]
    t3 = ok(await ts.initiate_transfer(api, a, b, player, "10", ts.phone()), 201)["transfer_id"]
    ok(await ts.cancel(api, a, t3))
    t4 = ok(await ts.initiate_transfer(api, b, a, there, "10", ts.phone()), 201)["transfer_id"]
    t5 = ok(await ts.initiate_send(api, a, player, "10", ts.phone(), ts.phone()), 201)["transfer_id"]

    ids, more, data = await listed(api, a)
    assert (ids, more) == ([t5, t4, t3, t2, t1], False)
    assert [x["role"] for x in data] == ["source", "destination", "source", "source", "source"]
    pending = "pending_verification"
    assert [x["status"] for x in data] == [pending, pending, "cancelled", pending, "completed"]
    assert all(set(x) == TRANSFER_KEYS for x in data), data[0]
    assert (await listed(api, a, "limit=2"))[:2] == ([t5, t4], True)
    assert (await listed(api, a, f"limit=2&starting_after={t4}"))[:2] == ([t3, t2], True)
    assert (await listed(api, a, f"limit=2&starting_after={t2}"))[:2] == ([t1], False)
    assert (await listed(api, a, f"limit=3&starting_after={t3}"))[:2] == ([t2, t1], False)
    assert (await listed(api, a, f"starting_after={t1}"))[:2] == ([], False)
    assert (await listed(api, a, "status=completed"))[:2] == ([t1], False)
    assert (await listed(api, a, "status=pending_verification"))[:2] == ([t5, t4, t2], False)
    assert (await listed(api, a, "status=pending_verification&limit=1"))[:2] == ([t5], True)
    assert (await listed(api, a, "role=source"))[:2] == ([t5, t3, t2, t1], False)
    assert (await listed(api, a, "role=destination"))[:2] == ([t4], False)
    assert (await listed(api, a, "role=destination&status=completed"))[:2] == ([], False)

    # The other side: b sent t4 and received t1..t3 (a send nobody claimed is nobody's but a's).
    ids, _, data = await listed(api, b)
    assert ids == [t4, t3, t2, t1]
    assert [x["role"] for x in data] == ["source", "destination", "destination", "destination"]
    assert (await listed(api, b, "status=completed"))[:2] == ([t1], False)
    assert (await listed(api, b, "role=destination&limit=2"))[:2] == ([t3, t2], True)
    assert (data[-1]["recipient_email"], data[-1]["new_balance"]) == (there, "110")  # t1, as b's recipient got it
    for x in data[1:]:  # the source's side is not the destination's to see
        assert (x["sender_email"], x["sender_phone"], x["metadata"], x["hold_transaction_id"]) == (None,) * 4, x

    for bad in ("limit=0", "limit=101", "status=creating", "role=both"):
        resp = await api.get(f"/api/transfers?{bad}", key=a["sdk_key"])
        assert resp.status == 400, (bad, resp)
    await ts.check_ledger(api)
