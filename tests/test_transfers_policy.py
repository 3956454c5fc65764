"""Transfer policy through the transfer calls: every combination of the three flags on both sides
(allows_outgoing_transfers and universal_transfers + linked_game_ids of the source,
allows_incoming_transfers and universal_transfers + linked_game_ids of the destination) as
initiate-transfer and initiate-send answer it, a sample of them as claim-currency answers it, a
policy that changes between a self-transfer's initiation and its claim, and the tenants a transfer
can never reach (itself, a suspended one, another environment, one that does not exist).

The rule itself, and the destinations list, are in tests/test_transfer_destinations.py; its
`oracle` says what each combination must answer. One pair of tenants serves the 64 combinations,
re-PATCHed for each; the flags a side does not use (the source's incoming, the destination's
outgoing) are set against the grain, so a call that read the wrong side's flag would show."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import pytest

from devstack.stack import Stack
from tests import transfers_support as ts
from tests.helpers import Api, assert_envelope
from tests.test_transfer_destinations import oracle

COMBOS = list(itertools.product([True, False], repeat=6))
FUNDS = "1000"
AMOUNT, HELD = "10", "11"  # the amount, and the amount with its 10% fee
# Claim-currency, a sample: each refusal (the earlier flag winning when several refuse), and three
# ways to be allowed (universal both sides, linked both sides, mixed).
CLAIM_SAMPLE = [
    (True, True, False, True, True, False),
    (False, True, False, True, True, False),
    (False, False, False, False, False, False),
    (True, True, False, False, True, False),
    (True, False, False, False, False, False),
    (True, False, False, True, True, True),
    (True, False, False, True, False, False),
    (True, False, True, True, False, False),
    (True, False, True, True, False, True),
    (True, True, True, True, False, True),
]


@dataclasses.dataclass(frozen=True)
class Pair:
    src: dict[str, Any]
    dst: dict[str, Any]
    player: str  # funded with FUNDS in src


async def make_pair(api: Api) -> Pair:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, FUNDS)
    return Pair(src, dst, player)


@pytest.fixture(scope="module")
def pair(stack: Stack) -> Pair:
    """The module's two tenants and funded player: plain data, made on a loop of its own."""

    async def make() -> Pair:
        async with Api(stack.gateway_url, admin_token=stack.env["INVO_ADMIN_TOKEN"]) as api:
            return await make_pair(api)

    return asyncio.run(make())


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


async def patch(api: Api, t: dict[str, Any], **body: Any) -> None:
    resp = await api.patch(f"/admin/tenants/{t['tenant_id']}", admin=True, json=body)
    assert resp.status == 200, resp


async def set_policy(api: Api, src: dict[str, Any], dst: dict[str, Any], combo: tuple[bool, ...]) -> None:
    out, src_universal, src_links, inc, dst_universal, dst_links = combo
    await patch(
        api,
        src,
        allows_outgoing_transfers=out,
        allows_incoming_transfers=not inc,  # not the source's business in a transfer from it
        universal_transfers=yes_no(src_universal),
        linked_game_ids=[dst["tenant_id"]] if src_links else [],
    )
    await patch(
        api,
        dst,
        allows_incoming_transfers=inc,
        allows_outgoing_transfers=not out,  # nor this the destination's
        universal_transfers=yes_no(dst_universal),
        linked_game_ids=[src["tenant_id"]] if dst_links else [],
    )


async def newest(api: Api, t: dict[str, Any]) -> str | None:
    """The id of the tenant's newest transfer, either side."""
    resp = await api.get("/api/transfers?limit=1", key=t["sdk_key"])
    assert resp.status == 200, resp
    return resp.body["data"][0]["transfer_id"] if resp.body["data"] else None


def refused(resp: Any, code: str) -> None:
    assert_envelope(resp, 403, code)
    assert resp.body["error"] == "transfer_not_allowed", resp


async def started_then_cancelled(api: Api, p: Pair, resp: Any, kind: str) -> None:
    """A transfer the policy allowed: held at once; cancelled, all of it back."""
    assert resp.status == 201, resp
    assert (resp.body["type"], resp.body["status"], resp.body["duplicate"]) == (kind, "pending_verification", False)
    assert resp.body["total_debited"] == HELD, resp
    assert await ts.balance(api, p.src, p.player) == str(int(FUNDS) - int(HELD))
    cancelled = await ts.cancel(api, p.src, resp.body["transfer_id"])
    assert cancelled.status == 200 and cancelled.body["status"] == "cancelled", cancelled
    assert await ts.balance(api, p.src, p.player) == FUNDS


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "".join("YN"[not f] for f in c))
async def test_initiation_answers_the_rule(api: Api, pair: Pair, combo: tuple[bool, ...]) -> None:
    """initiate-transfer: 201 exactly when no flag refuses, else 403 naming it and nothing held, no
    transfer made, no text sent. initiate-send (no destination yet): only the source's
    allows_outgoing_transfers refuses it."""
    p = pair
    await set_policy(api, p.src, p.dst, combo)
    before = await newest(api, p.src)
    expected = oracle(*combo)

    sender_phone = ts.phone()
    resp = await ts.initiate_transfer(api, p.src, p.dst, p.player, AMOUNT, sender_phone)
    if expected:
        refused(resp, expected)
        assert await ts.balance(api, p.src, p.player) == FUNDS
        assert await newest(api, p.src) == before
        assert await ts.texts(api, sender_phone) == []
    else:
        await started_then_cancelled(api, p, resp, "self_transfer")

    out = combo[0]
    sender_phone, recipient_phone = ts.phone(), ts.phone()
    before = await newest(api, p.src)
    resp = await ts.initiate_send(api, p.src, p.player, AMOUNT, sender_phone, recipient_phone)
    if out:
        await started_then_cancelled(api, p, resp, "send")
    else:
        refused(resp, "SOURCE_OUTGOING_DISABLED")
        assert await ts.balance(api, p.src, p.player) == FUNDS
        assert await newest(api, p.src) == before
        assert await ts.texts(api, sender_phone) == [] and await ts.texts(api, recipient_phone) == []
    await ts.check_ledger(api)


async def test_claim_currency_checks_the_rule_against_the_claiming_tenant(api: Api) -> None:
    """A send is verified under an open policy; the claiming tenant's call then answers the rule
    between the source and it. A refused claim leaves the send claimable (same code, nothing
    moved); an allowed one completes it, and the next sample gets a new send."""
    p = await make_pair(api)
    there = ts.email()
    expected_there = 0
    open_policy = (True, True, False, True, True, False)
    await set_policy(api, p.src, p.dst, open_policy)
    tid, code, _, _ = await ts.send_to_claimable(api, p.src, p.player, AMOUNT)
    for combo in CLAIM_SAMPLE:
        await set_policy(api, p.src, p.dst, combo)
        expected = oracle(*combo)
        resp = await ts.claim(api, p.dst, code, there, send=True)
        if expected:
            refused(resp, expected)
            shown = await ts.get(api, p.src, tid)
            assert shown.status == 200 and shown.body["status"] == "claimable", (combo, shown)
            assert shown.body["destination_tenant_id"] is None, shown
        else:
            assert resp.status == 200, (combo, resp)
            assert resp.body["status"] == "completed" and resp.body["duplicate"] is False, resp
            assert resp.body["destination_tenant_id"] == p.dst["tenant_id"], resp
            expected_there += int(AMOUNT)
            # The next send, under this policy (its allows_outgoing_transfers is on).
            tid, code, _, _ = await ts.send_to_claimable(api, p.src, p.player, AMOUNT)
        assert await ts.balance(api, p.dst, there) == str(expected_there), combo
    # The last send is still open: cancelled, the sender has back all but what was claimed.
    assert (await ts.cancel(api, p.src, tid)).body["status"] == "cancelled"
    claims = expected_there // int(AMOUNT)
    assert await ts.balance(api, p.src, p.player) == str(int(FUNDS) - claims * int(HELD))
    await ts.check_ledger(api)


async def test_a_policy_changed_after_initiation_refuses_the_claim_until_changed_back(api: Api) -> None:
    p = await make_pair(api)
    there = ts.email()
    tid, code, _ = await ts.self_transfer_to_claimable(api, p.src, p.dst, p.player, AMOUNT)
    await patch(api, p.dst, allows_incoming_transfers=False)

    resp = await ts.claim(api, p.dst, code, there)
    refused(resp, "DESTINATION_INCOMING_DISABLED")
    for side in (p.src, p.dst):
        shown = await ts.get(api, side, tid)
        assert shown.status == 200 and shown.body["status"] == "claimable", shown
    assert await ts.balance(api, p.dst, there) == "0"
    assert await ts.balance(api, p.src, p.player) == str(int(FUNDS) - int(HELD))  # still held, not returned

    await patch(api, p.dst, allows_incoming_transfers=True)
    resp = await ts.claim(api, p.dst, code, there)
    assert resp.status == 200, resp
    assert (resp.body["status"], resp.body["duplicate"], resp.body["new_balance"]) == ("completed", False, AMOUNT)
    assert await ts.balance(api, p.dst, there) == AMOUNT
    assert await ts.balance(api, p.src, p.player) == str(int(FUNDS) - int(HELD))
    await ts.check_ledger(api)


async def test_a_policy_changed_while_the_pin_is_pending_refuses_verify_and_resend_without_a_try(
    api: Api, stack: Stack
) -> None:
    """verify-sms and resend-sms check the rule too: a refusal neither counts a PIN try nor texts."""
    p = await make_pair(api)
    sender_phone = ts.phone()
    started = await ts.initiate_transfer(api, p.src, p.dst, p.player, AMOUNT, sender_phone)
    assert started.status == 201, started
    tid = started.body["transfer_id"]
    pin = await ts.pin_of(api, sender_phone)
    await patch(api, p.dst, allows_incoming_transfers=False)
    refused(await ts.verify(api, p.src, tid, pin), "DESTINATION_INCOMING_DISABLED")
    await ts.shift(stack, tid, "pin_sent_at", seconds=60)  # past the cool-down: only the policy refuses
    refused(await ts.resend(api, p.src, tid), "DESTINATION_INCOMING_DISABLED")
    shown = await ts.get(api, p.src, tid)
    assert (shown.body["status"], shown.body["pin_attempts_remaining"], shown.body["pin_sends_remaining"]) == (
        "pending_verification",
        5,
        2,
    ), shown
    assert len(await ts.texts(api, sender_phone)) == 1  # the first PIN only

    await patch(api, p.dst, allows_incoming_transfers=True)
    verified = await ts.verify(api, p.src, tid, pin)
    assert verified.status == 200 and verified.body["status"] == "claimable", verified
    await ts.check_ledger(api)


async def test_a_transfer_never_reaches_itself_or_an_unavailable_tenant(api: Api) -> None:
    p = await make_pair(api)
    suspended = await api.create_tenant(name="Suspended Game")
    await patch(api, suspended, status="suspended")
    production = await api.create_tenant(name="Live Game", environment="production")
    unknown = {"tenant_id": "tn_" + "0" * 26}
    for dst, code in (
        (p.src, "SAME_TENANT"),
        (suspended, "DESTINATION_UNAVAILABLE"),
        (production, "DESTINATION_UNAVAILABLE"),
        (unknown, "DESTINATION_UNAVAILABLE"),
    ):
        sender_phone = ts.phone()
        resp = await ts.initiate_transfer(api, p.src, dst, p.player, AMOUNT, sender_phone)
        refused(resp, code)
        assert await ts.texts(api, sender_phone) == []
    assert await newest(api, p.src) is None
    assert await ts.balance(api, p.src, p.player) == FUNDS

    # A send's claim: not by its own source, nor by a tenant of another environment; it stays
    # claimable for a tenant that may take it.
    tid, code, _, _ = await ts.send_to_claimable(api, p.src, p.player, AMOUNT)
    there = ts.email()
    refused(await ts.claim(api, p.src, code, there, send=True), "SAME_TENANT")
    refused(await ts.claim(api, production, code, there, send=True), "DESTINATION_UNAVAILABLE")
    assert (await ts.get(api, p.src, tid)).body["status"] == "claimable"
    assert (await ts.claim(api, p.dst, code, there, send=True)).status == 200
    assert await ts.balance(api, p.dst, there) == AMOUNT
    await ts.check_ledger(api)
