"""Transfers through an outage of the ledger and restarts of the transfers service itself.

- The ledger away at initiation: 503 with Retry-After and nothing held; the same key once it is
  back places exactly one hold.
- The ledger away at the claim: 503; the same claim once it is back is credited once; a claimant
  who never comes back is finished by the sweep. Either way both tenants hear of it once.
- The transfers service restarted between initiation and verify, and (killed) between verify and
  claim: nothing is lost, the PIN and the claim code still work.

Each test ends with the ledger check and no transfer left in `claiming` or `returning`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from devstack.stack import Stack
from services.common.config import Settings
from tests import transfers_support as ts
from tests.helpers import Api, Response, assert_envelope, eventually

BACK_TIMEOUT_S = 45.0  # the transfers service's channel to the ledger reconnects with a backoff
# Answers that say "the same request later": the ledger not reached yet, or someone else (the
# sweep) holding the row for a moment.
RETRYABLE = {(503, "SERVICE_UNAVAILABLE"), (503, "TIMEOUT"), (409, "TRANSFER_IN_PROGRESS"), (409, "CLAIM_IN_PROGRESS")}


@contextlib.asynccontextmanager
async def outage(stack: Stack, name: str) -> AsyncIterator[None]:
    """Process `name` stopped for the block, started again (and serving) after it, whatever happens."""
    await asyncio.to_thread(stack.stop_process, name)
    try:
        yield
    finally:
        await asyncio.to_thread(stack.start_process, name)
    assert stack.dead() == [], stack.log_tail("transfers")


async def restart(stack: Stack, name: str, *, sig: int = signal.SIGTERM) -> None:
    await asyncio.to_thread(stack.restart, name, sig=sig)
    assert stack.dead() == []


def assert_unavailable(resp: Response) -> None:
    assert_envelope(resp, 503, "SERVICE_UNAVAILABLE")
    assert int(resp.headers["Retry-After"]) >= 1, resp.headers


def assert_later(resp: Response) -> None:
    """Not done, retry later: 503, or 409 while the sweep holds the row for its own (failing) try."""
    assert isinstance(resp.body, dict) and (resp.status, resp.body.get("error_code")) in RETRYABLE, resp
    assert int(resp.headers["Retry-After"]) >= 1, resp.headers


async def retried(call: Callable[[], Awaitable[Response]]) -> Response:
    """`call` repeated as a client told to retry would, until it gets an answer that is not "later"."""

    async def answered() -> Response | None:
        resp = await call()
        code = resp.body.get("error_code") if isinstance(resp.body, dict) else None
        if (resp.status, code) in RETRYABLE:
            assert resp.headers.get("Retry-After"), resp
            return None
        return resp

    resp = await eventually(answered, timeout_s=BACK_TIMEOUT_S, interval_s=0.5)
    assert resp is not None
    return resp


async def _db(stack: Stack, query: str, *args: Any) -> list[asyncpg.Record]:
    schema = Settings.from_env(stack.env).schema("transfers")
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        return list(await conn.fetch(query.replace("{schema}", f'"{schema}"'), *args))
    finally:
        await conn.close()


async def rows_by_key(stack: Stack, tenant_id: str, key: str) -> list[dict[str, Any]]:
    """The stored rows of a tenant's idempotency key, `creating` included (the API never shows it)."""
    rows = await _db(
        stack,
        "SELECT transfer_id, status, hold_transaction_id, pin_sends FROM {schema}.transfers"
        " WHERE source_tenant_id = $1 AND idempotency_key = $2",
        tenant_id,
        key,
    )
    return [dict(r) for r in rows]


async def events_written(stack: Stack, transfer_id: str) -> list[tuple[str, str]]:
    """(tenant_id, event_type) of every event the transfer wrote to the outbox, sorted."""
    rows = await _db(
        stack,
        "SELECT tenant_id, event_type FROM {schema}.outbox WHERE (body::jsonb -> 'data' ->> 'transfer_id') = $1",
        transfer_id,
    )
    return sorted((r["tenant_id"], r["event_type"]) for r in rows)


async def player_entries(api: Api, t: dict[str, Any], player: str) -> list[dict[str, Any]]:
    resp = await api.get("/api/ledger/entries?limit=1000", key=t["sdk_key"])
    assert resp.status == 200 and resp.body["has_more"] is False, resp
    return [e for e in resp.body["data"] if e.get("player_email") == player]


async def assert_completed_once(
    api: Api, stack: Stack, src: dict[str, Any], dst: dict[str, Any], tid: str, there: str, amount: str
) -> None:
    """Completed, the recipient credited once, and one transfer.completed to each tenant."""
    done = await ts.get(api, dst, tid)
    assert done.status == 200 and done.body["status"] == "completed", done
    assert done.body["recipient_email"] == there and done.body["new_balance"] == amount
    assert await ts.balance(api, dst, there) == amount
    (credit,) = await player_entries(api, dst, there)  # one entry: the settlement
    assert credit["amount"] == amount and credit["transaction_id"] == done.body["transaction_id"]
    for t, role in ((src, "source"), (dst, "destination")):
        (event,) = await ts.transfer_events(stack, t["tenant_id"], tid)
        assert event["event_type"] == "transfer.completed" and event["data"]["role"] == role
        assert event["data"]["transaction_id"] == done.body["transaction_id"]
    assert await events_written(stack, tid) == sorted(
        [(src["tenant_id"], "transfer.completed"), (dst["tenant_id"], "transfer.completed")]
    )


async def assert_settled(api: Api, *tenants: dict[str, Any]) -> None:
    """The ledger balances, and no transfer of these tenants is left mid-way."""
    await ts.check_ledger(api)
    for t in tenants:
        for status in ("claiming", "returning"):
            resp = await api.get(f"/api/transfers?limit=100&status={status}", key=t["sdk_key"])
            assert resp.status == 200 and resp.body["data"] == [], resp


# -- the ledger away --------------------------------------------------------------------------------


async def test_an_initiation_the_ledger_missed_holds_nothing_and_its_key_holds_once_later(
    api: Api, stack: Stack
) -> None:
    src, dst = await ts.tenants(api)
    player, there, sender_phone, key = ts.email(), ts.email(), ts.phone(), ts.key()
    await ts.fund(api, src, player, "200")

    async def initiate() -> Response:
        return await ts.initiate_transfer(api, src, dst, player, "100", sender_phone, idempotency_key=key)

    async with outage(stack, "ledger"):
        assert_unavailable(await initiate())
        # Nothing held, nothing texted, nothing shown: the row waits in `creating` without a hold.
        (row,) = await rows_by_key(stack, src["tenant_id"], key)
        assert row["status"] == "creating" and row["hold_transaction_id"] is None, row
        assert await ts.texts(api, sender_phone) == []
        listed = await api.get("/api/transfers?limit=100", key=src["sdk_key"])
        assert listed.status == 200 and listed.body["data"] == [], listed
        assert_later(await initiate())  # the same key again, still without the ledger

    again = await retried(initiate)
    assert again.status in (200, 201), again
    assert again.body["duplicate"] is (again.status == 200), again
    assert again.body["status"] == "pending_verification" and again.body["amount"] == "100"
    tid = again.body["transfer_id"]
    assert (await initiate()).body["transfer_id"] == tid  # and again: a replay of the same transfer
    # Exactly one hold: one row, one debit of 100 + 10, one PIN text.
    (row,) = await rows_by_key(stack, src["tenant_id"], key)
    assert row["transfer_id"] == tid and row["status"] == "pending_verification" and row["pin_sends"] == 1, row
    assert await ts.balance(api, src, player) == "90"
    debits = [e for e in await player_entries(api, src, player) if e["amount"].startswith("-")]
    assert [(e["amount"], e["transaction_id"]) for e in debits] == [("-110", again.body["hold_transaction_id"])]
    pin = await ts.pin_of(api, sender_phone)
    assert len([b for b in await ts.texts(api, sender_phone) if ts.PIN_RE.match(b)]) == 1

    # The transfer goes on as any other.
    verified = await ts.verify(api, src, tid, pin)
    assert verified.status == 200 and verified.body["status"] == "claimable", verified
    claimed = await ts.claim(api, dst, verified.body["claim_code"], there)
    assert claimed.status == 200 and claimed.body["status"] == "completed", claimed
    await assert_completed_once(api, stack, src, dst, tid, there, "100")
    assert await ts.balance(api, src, player) == "90"
    await assert_settled(api, src, dst)


async def test_a_claim_the_ledger_missed_is_settled_once_by_its_retry_or_by_the_sweep(api: Api, stack: Stack) -> None:
    """Two claims made while the ledger is away: one claimant retries, the other never comes back."""
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "200")
    retrying, leaving = ts.email(), ts.email()
    tid_r, code_r, _ = await ts.self_transfer_to_claimable(api, src, dst, player, "50")
    tid_l, code_l, _ = await ts.self_transfer_to_claimable(api, src, dst, player, "30")
    assert await ts.balance(api, src, player) == "112"  # 200 - 55 - 33

    async with outage(stack, "ledger"):
        for code, who in ((code_r, retrying), (code_l, leaving)):
            assert_unavailable(await ts.claim(api, dst, code, who))
        for tid in (tid_r, tid_l):
            seen = await ts.get(api, src, tid)
            assert seen.status == 200 and seen.body["status"] == "claiming", seen
        # Another player with the code gets nothing: the claim belongs to its first claimant.
        other = await ts.claim(api, dst, code_r, ts.email())
        assert_envelope(other, 409, "TRANSFER_ALREADY_CLAIMED")

    # The claimant who retries: the same claim answers the settled transfer, credited once.
    again = await retried(lambda: ts.claim(api, dst, code_r, retrying))
    assert again.status == 200, again
    assert again.body["status"] == "completed" and again.body["duplicate"] is True, again
    assert again.body["recipient_email"] == retrying and again.body["new_balance"] == "50"
    replay = await ts.claim(api, dst, code_r, retrying)
    assert replay.status == 200 and replay.body["duplicate"] is True, replay
    assert replay.body["transaction_id"] == again.body["transaction_id"]
    await assert_completed_once(api, stack, src, dst, tid_r, retrying, "50")

    # The claimant who never retries: the sweep finishes the claim.
    async def swept() -> bool:
        await ts.sweep(stack)
        return bool((await ts.get(api, src, tid_l)).body["status"] == "completed")

    await eventually(swept, timeout_s=BACK_TIMEOUT_S, interval_s=0.5)
    await assert_completed_once(api, stack, src, dst, tid_l, leaving, "30")
    assert await ts.balance(api, src, player) == "112"  # the holds, settled: nothing more taken
    await assert_settled(api, src, dst)


# -- the transfers service restarted -----------------------------------------------------------------


async def test_a_restarted_transfers_service_loses_nothing_between_the_steps(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player, there, sender_phone = ts.email(), ts.email(), ts.phone()
    await ts.fund(api, src, player, "100")
    started = await ts.initiate_transfer(api, src, dst, player, "40", sender_phone, metadata={"quest": "q7"})
    assert started.status == 201, started
    tid = started.body["transfer_id"]
    pin = await ts.pin_of(api, sender_phone)

    # Between initiation and verify: a clean restart.
    await restart(stack, "transfers")
    seen = await ts.get(api, src, tid)
    assert seen.status == 200, seen
    for field in ("status", "amount", "fee_breakdown", "hold_transaction_id", "metadata", "pin_expires_at"):
        assert seen.body[field] == started.body[field], field
    assert seen.body["pin_attempts_remaining"] == 5 and seen.body["pin_sends_remaining"] == 2
    verified = await ts.verify(api, src, tid, pin)
    assert verified.status == 200 and verified.body["status"] == "claimable", verified
    code = verified.body["claim_code"]
    assert code == await ts.code_of(api, sender_phone)  # texted too, as before the restart

    # Between verify and claim: a crash.
    await restart(stack, "transfers", sig=signal.SIGKILL)
    seen = await ts.get(api, src, tid)
    assert seen.status == 200 and seen.body["status"] == "claimable", seen
    assert seen.body["claim_expires_at"] == verified.body["claim_expires_at"]
    claimed = await ts.claim(api, dst, code, there)
    assert claimed.status == 200 and claimed.body["status"] == "completed", claimed
    assert claimed.body["duplicate"] is False
    await assert_completed_once(api, stack, src, dst, tid, there, "40")
    assert await ts.balance(api, src, player) == "56"  # 100 - 40 - 4
    await assert_settled(api, src, dst)
