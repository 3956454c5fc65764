"""The money of a transfer through the gateway: the user pays exactly 10% on top; the source's fee
override comes out of the network's share, never the user's total or the destination's 3.5%; shares
are rounded down in minor units with the network taking the rest; amounts that are not a multiple
of 0.1 unit, a sender short of funds and a sender in debt are refused and change nothing; a
replayed initiation, claim or cancel (one after another or ten at once) never moves money twice."""

from __future__ import annotations

import asyncio
from typing import Any

from devstack.stack import Stack
from tests import transfers_support as ts
from tests.after_sale_support import paid, refund, spend
from tests.helpers import Api, Response, assert_envelope


def units(minor: int) -> str:
    """Minor units as the API writes them: "100", "0.35", "0.01" (written here, not imported)."""
    whole, cents = divmod(minor, 100)
    return str(whole) if cents == 0 else f"{whole}.{cents:02d}"


def minor(amount: str) -> int:
    whole, _, frac = amount.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def breakdown(amount: str, source_bps: int) -> dict[str, str]:
    """The rule: the fee is 10%; each tenant's share rounded down; the network the rest."""
    m = minor(amount)
    fee, source, destination = m // 10, m * source_bps // 10_000, m * 350 // 10_000
    return {
        "source_tenant": units(source),
        "destination_tenant": units(destination),
        "network": units(fee - source - destination),
        "total": units(fee),
    }


def ok(resp: Response, status: int = 200) -> dict[str, Any]:
    assert resp.status == status, resp
    return dict(resp.body)


async def listed(api: Api, t: dict[str, Any]) -> list[str]:
    resp = await api.get("/api/transfers", key=t["sdk_key"])
    assert resp.status == 200, resp
    return [x["transfer_id"] for x in resp.body["data"]]


async def set_fee(api: Api, t: dict[str, Any], percentage: str) -> None:
    resp = await api.patch(f"/admin/tenants/{t['tenant_id']}", admin=True, json={"transfer_fee_percentage": percentage})
    assert resp.status == 200 and resp.body["transfer_fee_percentage"] == percentage, resp


async def revenue(api: Api, t: dict[str, Any]) -> str:
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.status == 200, resp
    return str(resp.body["owed_units"])


async def transfer_all_the_way(
    api: Api, stack: Stack, src: dict[str, Any], dst: dict[str, Any], amount: str, expected: dict[str, str]
) -> None:
    """A funded self-transfer of `amount`, initiated, verified and claimed: the same breakdown at every
    step, exactly `amount` + fee from the sender, `amount` to the recipient, each tenant's share in
    its event."""
    player, there, sender_phone = ts.email(), ts.email(), ts.phone()
    fee = minor(expected["total"])
    await ts.fund(api, src, player, "20")
    await ts.fund(api, src, player, amount)
    started = await ts.initiate_transfer(api, src, dst, player, amount, sender_phone)
    assert started.status == 201, started
    assert started.body["fee_breakdown"] == expected, (amount, started.body)
    assert started.body["total_debited"] == units(minor(amount) + fee)
    assert started.body["new_balance"] == units(2000 - fee)
    tid = started.body["transfer_id"]
    verified = await ts.verify(api, src, tid, await ts.pin_of(api, sender_phone))
    assert verified.status == 200 and verified.body["fee_breakdown"] == expected, verified
    claimed = await ts.claim(api, dst, verified.body["claim_code"], there)
    assert claimed.status == 200 and claimed.body["fee_breakdown"] == expected, claimed
    assert (claimed.body["amount"], claimed.body["new_balance"]) == (units(minor(amount)), units(minor(amount)))
    assert await ts.balance(api, src, player) == units(2000 - fee)
    assert await ts.balance(api, dst, there) == units(minor(amount))
    for t, share in ((src, expected["source_tenant"]), (dst, expected["destination_tenant"])):
        (event,) = await ts.transfer_events(stack, t["tenant_id"], tid)
        assert (event["data"]["fee_total"], event["data"]["fee_share"]) == (expected["total"], share), event


# -- the fee override -----------------------------------------------------------------------------------


async def test_a_source_fee_of_5_percent_comes_out_of_the_networks_share(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    await set_fee(api, src, "5")
    five = {"source_tenant": "5", "destination_tenant": "3.50", "network": "1.50", "total": "10"}
    assert breakdown("100", 500) == five
    await transfer_all_the_way(api, stack, src, dst, "100", five)
    assert (await revenue(api, src), await revenue(api, dst)) == ("5", "3.50")

    # A send from the same tenant: the same split, whoever claims it.
    await ts.fund(api, src, player := ts.email(), "110")
    _, code, _, _ = await ts.send_to_claimable(api, src, player, "100")
    claimed = await ts.claim(api, dst, code, ts.email(), send=True)
    assert claimed.status == 200 and claimed.body["fee_breakdown"] == five, claimed
    assert await ts.balance(api, src, player) == "0"
    assert (await revenue(api, src), await revenue(api, dst)) == ("10", "7")

    # At the most a source may take, 6.5%, the network's share is nothing.
    await set_fee(api, src, "6.5")
    most = {"source_tenant": "6.50", "destination_tenant": "3.50", "network": "0", "total": "10"}
    await transfer_all_the_way(api, stack, src, dst, "100", most)
    assert (await revenue(api, src), await revenue(api, dst)) == ("16.50", "10.50")

    # More than that is refused, and the tenant keeps its 6.5%.
    for too_much in ("6.6", "7", "10"):
        resp = await api.patch(
            f"/admin/tenants/{src['tenant_id']}", admin=True, json={"transfer_fee_percentage": too_much}
        )
        assert resp.status == 400, resp
    got = await api.get(f"/admin/tenants/{src['tenant_id']}", admin=True)
    assert got.status == 200 and got.body["transfer_fee_percentage"] == "6.5", got
    await ts.check_ledger(api)


async def test_the_source_fee_applies_to_transfers_started_after_it_changed(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "220")
    before, code, _ = await ts.self_transfer_to_claimable(api, src, dst, player, "100")
    await set_fee(api, src, "5")
    claimed = await ts.claim(api, dst, code, ts.email())
    # The split was fixed when the sender agreed to it.
    assert claimed.status == 200 and claimed.body["fee_breakdown"] == breakdown("100", 350), claimed
    after = await ts.initiate_transfer(api, src, dst, player, "100", ts.phone())
    assert after.status == 201 and after.body["fee_breakdown"] == breakdown("100", 500), after
    assert before != after.body["transfer_id"] and await ts.balance(api, src, player) == "0"
    assert await revenue(api, src) == "3.50"
    await ts.check_ledger(api)


# -- rounding --------------------------------------------------------------------------------------------

# (amount, the source's basis points, the breakdown) worked out by hand from the rule.
ROUNDED = [
    ("0.1", 350, {"source_tenant": "0", "destination_tenant": "0", "network": "0.01", "total": "0.01"}),
    ("0.1", 500, {"source_tenant": "0", "destination_tenant": "0", "network": "0.01", "total": "0.01"}),
    ("1.7", 350, {"source_tenant": "0.05", "destination_tenant": "0.05", "network": "0.07", "total": "0.17"}),
    ("1.7", 500, {"source_tenant": "0.08", "destination_tenant": "0.05", "network": "0.04", "total": "0.17"}),
    ("12.3", 350, {"source_tenant": "0.43", "destination_tenant": "0.43", "network": "0.37", "total": "1.23"}),
    ("12.3", 500, {"source_tenant": "0.61", "destination_tenant": "0.43", "network": "0.19", "total": "1.23"}),
    ("12.3", 650, {"source_tenant": "0.79", "destination_tenant": "0.43", "network": "0.01", "total": "1.23"}),
]


async def test_shares_that_round_add_up_to_the_fee_exactly(api: Api, stack: Stack) -> None:
    dst = (await ts.tenants(api, 1))[0]
    sources: dict[int, dict[str, Any]] = {}
    for bps, percentage in ((350, "3.5"), (500, "5"), (650, "6.5")):
        sources[bps] = (await ts.tenants(api, 1))[0]
        await set_fee(api, sources[bps], percentage)
    owed = {bps: 0 for bps in sources}
    owed_destination = 0
    for amount, bps, expected in ROUNDED:
        assert breakdown(amount, bps) == expected, (amount, bps)
        assert sum(minor(v) for k, v in expected.items() if k != "total") == minor(expected["total"])
        await transfer_all_the_way(api, stack, sources[bps], dst, amount, expected)
        owed[bps] += minor(expected["source_tenant"])
        owed_destination += minor(expected["destination_tenant"])
    for bps, t in sources.items():
        assert await revenue(api, t) == units(owed[bps]), bps
    assert await revenue(api, dst) == units(owed_destination)
    await ts.check_ledger(api)


# -- refusals ---------------------------------------------------------------------------------------------


async def test_amounts_that_are_not_a_multiple_of_a_tenth_are_refused_and_change_nothing(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, sender_phone, recipient_phone = ts.email(), ts.phone(), ts.phone()
    await ts.fund(api, src, player, "100")
    for amount in (
        "0.05",
        "0.15",
        "1.01",
        "0",
        "0.0",
        "-1",
        "1.234",
        "abc",
        "",
        "1e2",
        " 1",
        "1000000000.1",
        "1000000000",
        "99999999999",
    ):
        for resp in (
            await ts.initiate_transfer(api, src, dst, player, amount, sender_phone),
            await ts.initiate_send(api, src, player, amount, sender_phone, recipient_phone),
        ):
            assert_envelope(resp, 400, "INVALID_AMOUNT")
            assert resp.body.get("param") == "amount", (amount, resp)
    assert await ts.balance(api, src, player) == "100"
    assert await ts.texts(api, sender_phone) == [] and await ts.texts(api, recipient_phone) == []
    assert await listed(api, src) == []
    # The smallest and the largest amounts are fine.
    for amount, held in (("0.1", "99.89"), ("0.10", "99.78")):
        ok = await ts.initiate_transfer(api, src, dst, player, amount, ts.phone())
        assert ok.status == 201 and ok.body["new_balance"] == held, ok
    await ts.fund(api, src, rich := ts.email(), "1099999999.89")
    ok = await ts.initiate_transfer(api, src, dst, rich, "999999999.9", ts.phone())
    assert ok.status == 201 and ok.body["total_debited"] == "1099999999.89", ok
    assert await ts.balance(api, src, rich) == "0"
    await ts.check_ledger(api)


async def test_a_sender_short_of_funds_is_refused_and_the_key_is_free_after_a_top_up(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, sender_phone, k = ts.email(), ts.phone(), ts.key()
    await ts.fund(api, src, player, "109.9")
    short = await ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=k)
    assert_envelope(short, 402, "INSUFFICIENT_BALANCE")
    assert await ts.balance(api, src, player) == "109.90"
    assert await ts.texts(api, sender_phone) == []
    assert await listed(api, src) == []
    send = await ts.initiate_send(api, src, player, "100", sender_phone, ts.phone())
    assert_envelope(send, 402, "INSUFFICIENT_BALANCE")

    await ts.fund(api, src, player, "0.1")
    started = await ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=k)
    assert started.status == 201 and started.body["duplicate"] is False, started
    assert (started.body["new_balance"], await ts.balance(api, src, player)) == ("0", "0")
    assert len(await ts.texts(api, sender_phone)) == 1

    # What is held cannot be spent meanwhile, nor sent again.
    await ts.fund(api, src, player, "1")
    assert_envelope(await spend(api, src, player, "1.01"), 402, "INSUFFICIENT_BALANCE")
    again = await ts.initiate_transfer(api, src, dst, player, "1", ts.phone())
    assert_envelope(again, 402, "INSUFFICIENT_BALANCE")
    assert await ts.balance(api, src, player) == "1"
    await ts.check_ledger(api)


async def test_a_sender_in_debt_cannot_send(api: Api) -> None:
    src, dst = await ts.tenants(api)
    # The honest way to a debt: currency bought, spent, then the purchase refunded.
    player, bought = await paid(api, src)
    assert (await spend(api, src, player, "100")).status == 200
    refunded = await refund(api, bought["order_id"])
    assert refunded.status == 201 and refunded.body["refund"]["new_balance"] == "-100", refunded
    sender_phone = ts.phone()
    assert_envelope(await ts.initiate_transfer(api, src, dst, player, "10", sender_phone), 402, "PLAYER_IN_DEBT")
    assert_envelope(await ts.initiate_send(api, src, player, "10", sender_phone, ts.phone()), 402, "PLAYER_IN_DEBT")
    assert await ts.balance(api, src, player) == "-100"
    assert await ts.texts(api, sender_phone) == []
    assert await listed(api, src) == []
    # A credit that leaves the debt partly unpaid changes nothing.
    await ts.fund(api, src, player, "50")
    assert_envelope(await ts.initiate_transfer(api, src, dst, player, "10", sender_phone), 402, "PLAYER_IN_DEBT")
    assert await ts.balance(api, src, player) == "-50"
    await ts.check_ledger(api)


# -- replays and idempotency ---------------------------------------------------------------------------


async def test_replays_answer_the_first_result_and_move_no_money_twice(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, there, sender_phone, k = ts.email(), ts.email(), ts.phone(), ts.key()
    await ts.fund(api, src, player, "300")

    first = ok(await ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=k), 201)
    again = ok(await ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=k))
    assert again["duplicate"] is True and again["transfer_id"] == first["transfer_id"]
    assert again["hold_transaction_id"] == first["hold_transaction_id"] and again["new_balance"] == "190"
    assert await ts.balance(api, src, player) == "190"  # one hold
    assert len(await ts.texts(api, sender_phone)) == 1  # one PIN

    for other in (
        ts.initiate_transfer(api, src, dst, player, "101", sender_phone, idempotency_key=k),
        ts.initiate_transfer(api, src, dst, ts.email(), "100", sender_phone, idempotency_key=k),
        ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=k, metadata={"a": 1}),
        ts.initiate_send(api, src, player, "100", sender_phone, ts.phone(), idempotency_key=k),
    ):
        assert_envelope(await other, 400, "IDEMPOTENCY_KEY_REUSED")
    assert await ts.balance(api, src, player) == "190"
    assert await listed(api, src) == [first["transfer_id"]]

    tid = first["transfer_id"]
    code = ok(await ts.verify(api, src, tid, await ts.pin_of(api, sender_phone)))["claim_code"]
    claimed = ok(await ts.claim(api, dst, code, there))
    replayed = ok(await ts.claim(api, dst, code, there))
    assert (replayed["duplicate"], replayed["transaction_id"], replayed["new_balance"]) == (
        True, claimed["transaction_id"], "100",
    )  # fmt: skip
    assert await ts.balance(api, dst, there) == "100"
    # The same code for another player is not the same claim.
    assert_envelope(await ts.claim(api, dst, code, ts.email()), 409, "TRANSFER_ALREADY_CLAIMED")

    # A key replayed after the transfer moved on answers the transfer as it is now.
    late = ok(await ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=k))
    assert (late["duplicate"], late["status"], late["transfer_id"]) == (True, "completed", tid)
    assert await ts.balance(api, src, player) == "190"
    await ts.check_ledger(api)


async def test_ten_initiations_at_once_with_one_key_make_one_transfer_and_one_hold(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, sender_phone, k = ts.email(), ts.phone(), ts.key()
    await ts.fund(api, src, player, "1000")

    answers = await asyncio.gather(
        *(ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=k) for _ in range(10))
    )
    statuses = sorted(a.status for a in answers)
    assert statuses.count(201) == 1, answers
    ids = set()
    for a in answers:
        if a.status == 409:  # the first was still creating it: a retry gets the answer
            assert_envelope(a, 409, "TRANSFER_IN_PROGRESS")
        else:
            assert a.status in (200, 201) and a.body["duplicate"] is (a.status == 200), a
            ids.add(a.body["transfer_id"])
    retried: Response = await ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=k)
    assert retried.status == 200 and retried.body["duplicate"] is True, retried
    assert ids == {retried.body["transfer_id"]}
    assert await listed(api, src) == [retried.body["transfer_id"]]
    assert await ts.balance(api, src, player) == "890"
    assert len(await ts.texts(api, sender_phone)) == 1
    await ts.check_ledger(api)
