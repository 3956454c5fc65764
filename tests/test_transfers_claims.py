"""Claiming a transfer: twice, racing, by the wrong tenant or call, after its code expired, with codes
unknown, malformed or typed loosely, past the failed-claims limit, and where the policy refuses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from devstack.stack import Stack
from tests import transfers_support as ts
from tests.helpers import Api, assert_envelope, eventually


async def status_of(api: Api, t: dict[str, Any], transfer_id: str) -> dict[str, Any]:
    resp = await ts.get(api, t, transfer_id)
    assert resp.status == 200, resp
    return dict(resp.body)


async def ended(api: Api, t: dict[str, Any], transfer_id: str, status: str) -> dict[str, Any]:
    """The transfer once it reached `status` (a return finishes in the sweep that started it, or the next)."""

    async def done() -> dict[str, Any]:
        body = await status_of(api, t, transfer_id)
        return body if body["status"] == status else {}

    found: dict[str, Any] = await eventually(done, timeout_s=15)
    return found


async def claimable(
    api: Api, kind: str, src: dict[str, Any], dst: dict[str, Any], player: str, amount: str
) -> tuple[str, str]:
    """A verified transfer of `kind` to `dst` (a self-transfer) or to a phone (a send): (id, code)."""
    if kind == "send":
        tid, code, _, _ = await ts.send_to_claimable(api, src, player, amount)
    else:
        tid, code, _ = await ts.self_transfer_to_claimable(api, src, dst, player, amount)
    return tid, code


# -- twice, racing ------------------------------------------------------------------------------


async def test_a_self_transfer_is_claimed_once(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player, there, other = ts.email(), ts.email(), ts.email()
    await ts.fund(api, src, player, "110")
    tid, code = await claimable(api, "self_transfer", src, dst, player, "100")
    first = await ts.claim(api, dst, code, there)
    assert first.status == 200 and first.body["duplicate"] is False, first
    again = await ts.claim(api, dst, code, there)
    assert again.status == 200 and again.body["duplicate"] is True, again
    assert again.body["transaction_id"] == first.body["transaction_id"]
    assert again.body["new_balance"] == "100"
    same = await ts.claim(api, dst, code, there.upper())  # the same player, as emails compare
    assert same.status == 200 and same.body["duplicate"] is True, same
    assert_envelope(await ts.claim(api, dst, code, other), 409, "TRANSFER_ALREADY_CLAIMED")
    assert await ts.balance(api, dst, there) == "100"
    assert await ts.balance(api, src, player) == "0"
    for t in (src, dst):
        (event,) = await ts.transfer_events(stack, t["tenant_id"], tid)
        assert event["event_type"] == "transfer.completed"
    await ts.check_ledger(api)


async def test_a_send_is_claimed_once_whoever_asks_again(api: Api) -> None:
    src, dst, third = await ts.tenants(api, 3)
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "55")
    tid, code = await claimable(api, "send", src, dst, player, "50")
    first = await ts.claim(api, dst, code, there, send=True)
    assert first.status == 200 and first.body["duplicate"] is False, first
    assert_envelope(await ts.claim(api, third, code, there, send=True), 409, "TRANSFER_ALREADY_CLAIMED")
    assert_envelope(await ts.claim(api, third, code, ts.email(), send=True), 409, "TRANSFER_ALREADY_CLAIMED")
    assert_envelope(await ts.claim(api, dst, code, ts.email(), send=True), 409, "TRANSFER_ALREADY_CLAIMED")
    again = await ts.claim(api, dst, code, there, send=True)
    assert again.status == 200 and again.body["duplicate"] is True, again
    assert await ts.balance(api, dst, there) == "50"
    assert (await status_of(api, src, tid))["destination_tenant_id"] == dst["tenant_id"]
    await ts.check_ledger(api)


@pytest.mark.parametrize(("kind", "n"), [("self_transfer", 2), ("self_transfer", 10), ("send", 2), ("send", 10)])
async def test_racing_claims_one_wins(api: Api, stack: Stack, kind: str, n: int) -> None:
    src, dst, other = await ts.tenants(api, 3)
    player = ts.email()
    await ts.fund(api, src, player, "22")
    tid, code = await claimable(api, kind, src, dst, player, "20")
    # A send may be claimed in any tenant: the racers are spread over two.
    claimers = [(dst if kind == "self_transfer" or i % 2 == 0 else other, ts.email()) for i in range(n)]
    answers = await asyncio.gather(*(ts.claim(api, t, code, p, send=kind == "send") for t, p in claimers))
    won = [(c, a) for c, a in zip(claimers, answers, strict=True) if a.status == 200]
    assert len(won) == 1, answers
    for a in answers:
        if a.status != 200:
            assert_envelope(a, 409, "TRANSFER_ALREADY_CLAIMED")
    (winner, there), answer = won[0]
    assert answer.body["duplicate"] is False and answer.body["recipient_email"] == there
    assert await ts.balance(api, winner, there) == "20"
    assert await ts.balance(api, src, player) == "0"
    for t in (src, winner):
        events = await ts.transfer_events(stack, t["tenant_id"], tid)
        assert [e["event_type"] for e in events] == ["transfer.completed"]
    await ts.check_ledger(api)


# -- the wrong tenant, the wrong call -------------------------------------------------------------


async def test_only_the_destination_claims_a_self_transfer(api: Api) -> None:
    src, dst, stranger = await ts.tenants(api, 3)
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "110")
    tid, code = await claimable(api, "self_transfer", src, dst, player, "100")
    for t in (stranger, src):
        assert_envelope(await ts.claim(api, t, code, there), 403, "NOT_TRANSFER_DESTINATION")
    assert (await status_of(api, src, tid))["status"] == "claimable"
    assert await ts.balance(api, src, player) == "0"
    claimed = await ts.claim(api, dst, code, there)
    assert claimed.status == 200 and claimed.body["status"] == "completed", claimed
    assert await ts.balance(api, dst, there) == "100"
    await ts.check_ledger(api)


async def test_a_code_is_claimed_with_its_own_call(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "66")
    self_tid, self_code = await claimable(api, "self_transfer", src, dst, player, "30")
    send_tid, send_code = await claimable(api, "send", src, dst, player, "30")
    assert_envelope(await ts.claim(api, dst, send_code, there), 409, "CLAIM_KIND_MISMATCH")
    assert_envelope(await ts.claim(api, dst, self_code, there, send=True), 409, "CLAIM_KIND_MISMATCH")
    for tid in (self_tid, send_tid):
        assert (await status_of(api, src, tid))["status"] == "claimable"
    assert (await ts.claim(api, dst, self_code, there)).status == 200
    assert (await ts.claim(api, dst, send_code, there, send=True)).status == 200
    assert await ts.balance(api, dst, there) == "60"
    await ts.check_ledger(api)


# -- expiry -------------------------------------------------------------------------------------


async def expired_code(
    api: Api, stack: Stack, kind: str, src: dict[str, Any], dst: dict[str, Any]
) -> tuple[str, str, str]:
    """A claimable transfer whose claim window ended, claimed before any sweep expired it: 410
    CLAIM_CODE_EXPIRED. The service's own sweep runs every 2 s and may expire one first (then the
    claim is 410 TRANSFER_EXPIRED); another transfer, of another player, is tried then.
    Answers (transfer_id, code, sender)."""
    for _ in range(5):
        player = ts.email()
        await ts.fund(api, src, player, "11")
        tid, code = await claimable(api, kind, src, dst, player, "10")
        await ts.shift(stack, tid, "claim_expires_at")
        resp = await ts.claim(api, dst, code, ts.email(), send=kind == "send")
        if resp.status == 410 and resp.body["error_code"] == "TRANSFER_EXPIRED":
            continue
        assert_envelope(resp, 410, "CLAIM_CODE_EXPIRED")
        assert resp.body["transfer_id"] == tid
        return tid, code, player
    raise AssertionError("the sweep expired every transfer before its claim")


@pytest.mark.parametrize("kind", ["self_transfer", "send"])
async def test_an_expired_claim_code_gives_the_money_back(api: Api, stack: Stack, kind: str) -> None:
    src, dst = await ts.tenants(api)
    there = ts.email()
    tid, code, player = await expired_code(api, stack, kind, src, dst)
    await ts.sweep(stack)
    body = await ended(api, src, tid, "expired")
    assert body["end_reason"] == "claim_expired"
    assert await ts.balance(api, src, player) == "11"  # amount and fee
    assert body["new_balance"] == "11"
    assert_envelope(await ts.claim(api, dst, code, there, send=kind == "send"), 410, "TRANSFER_EXPIRED")
    assert await ts.balance(api, src, player) == "11"

    (event,) = await ts.transfer_events(stack, src["tenant_id"], tid)
    assert event["event_type"] == "transfer.expired" and event["data"]["reason"] == "claim_expired"
    assert event["data"]["new_balance"] == "11" and event["data"]["fee_share"] == "0"
    if kind == "self_transfer":
        (there_event,) = await ts.transfer_events(stack, dst["tenant_id"], tid)
        assert there_event["event_type"] == "transfer.expired" and there_event["data"]["role"] == "destination"
    else:  # nobody claimed it: there is no destination to tell
        assert event["data"]["destination_tenant_id"] is None
        assert body["destination_tenant_id"] is None
    await ts.check_ledger(api)


# -- codes as typed --------------------------------------------------------------------------------


async def test_unknown_and_malformed_codes(api: Api) -> None:
    (t,) = await ts.tenants(api, 1)
    there = ts.email()
    for code in ("7K2M-9XQP-R4TD-H8WN", "0000-0000-0000-0000", "zzzzzzzzzzzzzzzz"):
        for send in (False, True):
            assert_envelope(await ts.claim(api, t, code, there, send=send), 404, "CLAIM_CODE_NOT_FOUND")
    for code in ("7K2M-9XQP-R4TD-H8W", "7K2M-9XQP-R4TD-H8WNX", "UUUU-AAAA-AAAA-AAAA", "7K2M_9XQP_R4TD_H8WN", "x" * 70):
        resp = await ts.claim(api, t, code, there)
        assert_envelope(resp, 400, "INVALID_CLAIM_CODE")
        assert resp.body["param"] == "claim_code", resp
    await ts.check_ledger(api)


def loosely(code: str, how: str) -> str:
    flat = code.replace("-", "")
    if how == "lower":
        return code.lower()
    if how == "spaces":
        return " ".join(flat[i : i + 4] for i in range(0, 16, 4)) + " "
    if how == "no hyphens":
        return flat
    if how == "confusables":
        return code.replace("0", "O").replace("1", "I", 1).replace("1", "L")
    return " ".join(flat.lower().replace("0", "o").replace("1", "l"))  # all of them at once


async def test_codes_typed_loosely_still_claim(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, there = ts.email(), ts.email()
    # A code with a 0 or a 1 in it, to type it with O, I, L (most codes have one).
    for _ in range(12):
        await ts.fund(api, src, player, "11")
        tid, code = await claimable(api, "self_transfer", src, dst, player, "10")
        if "0" in code or "1" in code:
            break
        assert (await ts.cancel(api, src, tid)).status == 200
    else:
        raise AssertionError("twelve codes without a 0 or a 1")
    first = await ts.claim(api, dst, loosely(code, "all"), there)
    assert first.status == 200 and first.body["duplicate"] is False, first
    assert first.body["transfer_id"] == tid
    for how in ("lower", "spaces", "no hyphens", "confusables"):
        variant = loosely(code, how)
        assert variant != code
        again = await ts.claim(api, dst, variant, there)
        assert again.status == 200 and again.body["duplicate"] is True, (how, variant, again)
        assert again.body["transfer_id"] == tid
    assert await ts.balance(api, dst, there) == "10"
    await ts.check_ledger(api)


# -- guessing ------------------------------------------------------------------------------------


async def test_failed_claims_are_limited_per_tenant(api: Api) -> None:
    src, guesser, honest = await ts.tenants(api, 3)
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "11")
    tid, code = await claimable(api, "send", src, guesser, player, "10")
    for i in range(20):
        guess = f"{i:04d}-0000-0000-0000"
        assert_envelope(await ts.claim(api, guesser, guess, there, send=True), 404, "CLAIM_CODE_NOT_FOUND")
    limited = await ts.claim(api, guesser, code, there, send=True)
    assert_envelope(limited, 429, "CLAIM_RATE_LIMITED")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60, limited.headers
    assert_envelope(await ts.claim(api, guesser, "garbage", there, send=True), 429, "CLAIM_RATE_LIMITED")
    assert (await status_of(api, src, tid))["status"] == "claimable"
    # The limit is the guesser's alone.
    claimed = await ts.claim(api, honest, code, there, send=True)
    assert claimed.status == 200, claimed
    assert await ts.balance(api, honest, there) == "10"
    await ts.check_ledger(api)


# -- the policy at claim time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refuse", "code"),
    [
        ("incoming", "DESTINATION_INCOMING_DISABLED"),
        ("source_linked", "SOURCE_NOT_LINKED"),
        ("destination_linked", "DESTINATION_NOT_LINKED"),
    ],
)
async def test_a_send_is_claimed_only_where_the_policy_allows(api: Api, refuse: str, code: str) -> None:
    src = await api.create_tenant(universal_transfers="no" if refuse == "source_linked" else "yes")
    refuser = await api.create_tenant(
        allows_incoming_transfers=refuse != "incoming",
        universal_transfers="no" if refuse == "destination_linked" else "yes",
    )
    allowed = await api.create_tenant()
    if refuse == "source_linked":  # the source sends only to `allowed`
        patched = await api.patch(
            f"/admin/tenants/{src['tenant_id']}", admin=True, json={"linked_game_ids": [allowed["tenant_id"]]}
        )
        assert patched.status == 200, patched
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "11")
    tid, claim_code = await claimable(api, "send", src, allowed, player, "10")
    refused = await ts.claim(api, refuser, claim_code, there, send=True)
    assert_envelope(refused, 403, code)
    body = await status_of(api, src, tid)
    assert body["status"] == "claimable" and body["destination_tenant_id"] is None
    assert await ts.balance(api, src, player) == "0"
    claimed = await ts.claim(api, allowed, claim_code, there, send=True)
    assert claimed.status == 200 and claimed.body["destination_tenant_id"] == allowed["tenant_id"], claimed
    assert await ts.balance(api, allowed, there) == "10"
    await ts.check_ledger(api)
