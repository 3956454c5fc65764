"""Partner payouts in the ledger, keyed by payout_id: a hold of the owed revenue (never more than is
available, never expiring), then its settlement or its release (one release key: only one ever
applies), then at most one ACH return of what was settled; GetRevenue's numbers through each step,
holds racing on one tenant, and the ledger check clean in every state. Against the real ledger
service over gRPC; the revenue comes from item purchases through the gateway."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from invo.v1 import ledger_pb2

from devstack.stack import Stack
from services.common import errors, ids
from services.common.config import Settings
from services.ledger import chart, reads
from tests.helpers import Api
from tests.ledger_stateful_support import call_ledger, ledger

__all__ = ["ledger"]  # the fixture, imported for this module's tests

PURCHASE = "/api/item-purchases/purchase-item"


async def _tenant_earning(api: Api, units: int) -> dict[str, Any]:
    """A tenant whose partner earned `units` x 90% (the default 10% fee) from one purchase."""
    t = await api.create_tenant()
    email = f"p-{uuid.uuid4().hex[:12]}@example.com"
    funded = await api.credit(t["tenant_id"], email, str(units))
    assert funded.status == 200, funded
    body = {
        "player_email": email,
        "item_id": "sword",
        "item_name": "Sword",
        "price": str(units),
        "idempotency_key": ids.new_id("test"),
    }
    bought = await api.post(PURCHASE, key=t["sdk_key"], json=body)
    assert bought.status == 200, bought
    return t


def _payout_id() -> str:
    return ids.new_id("po")


def _hold(tenant_id: str, payout_id: str, amount: int) -> ledger_pb2.HoldPayoutRequest:
    return ledger_pb2.HoldPayoutRequest(tenant_id=tenant_id, payout_id=payout_id, amount_minor=amount)


def _ref(tenant_id: str, payout_id: str) -> ledger_pb2.PayoutRef:
    return ledger_pb2.PayoutRef(tenant_id=tenant_id, payout_id=payout_id)


async def _revenue(ledger: Any, tenant_id: str) -> dict[str, int]:
    r = await call_ledger(ledger.GetRevenue, ledger_pb2.GetRevenueRequest(tenant_id=tenant_id))
    return {
        "owed": r.owed_minor,
        "held": r.held_minor,
        "available": r.available_minor,
        "paid_out": r.paid_out_minor,
        "lifetime": r.lifetime_minor,
        "returned": r.returned_minor,
    }


def _numbers(owed: int, held: int, paid_out: int, lifetime: int, returned: int = 0) -> dict[str, int]:
    return {
        "owed": owed,
        "held": held,
        "available": owed - held,
        "paid_out": paid_out,
        "lifetime": lifetime,
        "returned": returned,
    }


async def _refused(call: Any, code: str) -> errors.InvoError:
    with pytest.raises(errors.InvoError) as exc:
        await call
    assert exc.value.error_code == code, exc.value
    return exc.value


async def _twice(method: Any, request: Any) -> ledger_pb2.TransactionResult:
    """The write, then the same again: the replay answers the first result, marked duplicate."""
    first = await call_ledger(method, request)
    again = await call_ledger(method, request)
    assert (first.duplicate, again.duplicate) == (False, True), (first, again)
    first.duplicate = True
    assert again == first
    first.duplicate = False
    return first


async def _txn(ledger: Any, tenant_id: str, txn_id: str) -> ledger_pb2.Transaction:
    return await call_ledger(
        ledger.GetTransaction, ledger_pb2.GetTransactionRequest(transaction_id=txn_id, tenant_id=tenant_id)
    )


async def _check_clean(ledger: Any) -> None:
    check = await call_ledger(ledger.Check, ledger_pb2.CheckRequest())
    assert check.ok and check.total_balance_minor == 0, check
    assert list(check.negative_accounts) == [] and list(check.drifted_accounts) == [], check
    assert list(check.unbalanced_transactions) == [], check


async def _ledger_db(stack: Stack) -> asyncpg.Connection:
    return await asyncpg.connect(
        stack.env["INVO_DATABASE_URL"],
        timeout=10.0,
        server_settings={"search_path": Settings.from_env(stack.env).schema("ledger")},
    )


# -- each write, replayed; the numbers through every step -----------------------------------------


async def test_hold_settle_release_and_return_each_replay_and_move_the_revenue(api: Api, ledger: Any) -> None:
    t = await _tenant_earning(api, 100)  # 90 units owed: 9000 minor, $9.00
    tenant_id = t["tenant_id"]
    assert await _revenue(ledger, tenant_id) == _numbers(9000, 0, 0, 9000)

    paid, dropped = _payout_id(), _payout_id()
    held = await _twice(ledger.HoldPayout, _hold(tenant_id, paid, 3000))
    assert (held.status, held.amount_minor) == ("pending", 3000)
    hold_txn = await _txn(ledger, tenant_id, held.transaction_id)
    assert (hold_txn.kind, hold_txn.status, hold_txn.HasField("expires_at")) == ("payout_hold", "pending", False)
    assert await _revenue(ledger, tenant_id) == _numbers(9000, 3000, 0, 9000)
    # Another amount under the same payout id is another request.
    await _refused(call_ledger(ledger.HoldPayout, _hold(tenant_id, paid, 3001)), "IDEMPOTENCY_KEY_REUSED")

    await _twice(ledger.HoldPayout, _hold(tenant_id, dropped, 2000))
    assert await _revenue(ledger, tenant_id) == _numbers(9000, 5000, 0, 9000)

    # The expiry loop never voids a payout's hold: it has no expiry.
    await call_ledger(ledger.ExpireHolds, ledger_pb2.ExpireHoldsRequest())
    assert (await _txn(ledger, tenant_id, held.transaction_id)).status == "pending"

    settled = await _twice(ledger.SettlePayout, _ref(tenant_id, paid))
    assert (settled.transaction_id, settled.status, settled.amount_minor) == (held.transaction_id, "posted", 3000)
    assert await _revenue(ledger, tenant_id) == _numbers(6000, 2000, 3000, 9000)

    released = await _twice(ledger.ReleasePayout, _ref(tenant_id, dropped))
    assert (released.status, released.amount_minor) == ("voided", 2000)
    assert await _revenue(ledger, tenant_id) == _numbers(6000, 0, 3000, 9000)

    returned = await _twice(ledger.ReturnPayout, _ref(tenant_id, paid))
    assert (returned.status, returned.amount_minor) == ("posted", 3000)
    assert (await _txn(ledger, tenant_id, returned.transaction_id)).kind == "payout_return"
    assert await _revenue(ledger, tenant_id) == _numbers(9000, 0, 0, 9000, returned=3000)

    # The whole owed revenue, returned money included, may be paid out again.
    again = _payout_id()
    await call_ledger(ledger.HoldPayout, _hold(tenant_id, again, 9000))
    await call_ledger(ledger.SettlePayout, _ref(tenant_id, again))
    assert await _revenue(ledger, tenant_id) == _numbers(0, 0, 9000, 9000, returned=3000)
    await _check_clean(ledger)


async def test_settling_and_releasing_share_one_key(api: Api, ledger: Any) -> None:
    tenant_id = (await _tenant_earning(api, 100))["tenant_id"]
    settled_first, released_first = _payout_id(), _payout_id()
    for payout_id in (settled_first, released_first):
        await call_ledger(ledger.HoldPayout, _hold(tenant_id, payout_id, 1000))

    settled = await call_ledger(ledger.SettlePayout, _ref(tenant_id, settled_first))
    await _refused(call_ledger(ledger.ReleasePayout, _ref(tenant_id, settled_first)), "IDEMPOTENCY_KEY_REUSED")
    again = await call_ledger(ledger.SettlePayout, _ref(tenant_id, settled_first))
    assert (again.duplicate, again.status, again.transaction_id) == (True, "posted", settled.transaction_id)

    released = await call_ledger(ledger.ReleasePayout, _ref(tenant_id, released_first))
    await _refused(call_ledger(ledger.SettlePayout, _ref(tenant_id, released_first)), "IDEMPOTENCY_KEY_REUSED")
    again = await call_ledger(ledger.ReleasePayout, _ref(tenant_id, released_first))
    assert (again.duplicate, again.status, again.transaction_id) == (True, "voided", released.transaction_id)

    assert await _revenue(ledger, tenant_id) == _numbers(8000, 0, 1000, 9000)
    await _check_clean(ledger)


# -- prerequisites ------------------------------------------------------------------------------------


async def test_a_release_or_return_without_its_prerequisite_is_refused(api: Api, ledger: Any) -> None:
    tenant_id = (await _tenant_earning(api, 100))["tenant_id"]
    other = (await _tenant_earning(api, 100))["tenant_id"]
    never_held = _payout_id()
    for method in (ledger.SettlePayout, ledger.ReleasePayout, ledger.ReturnPayout):
        await _refused(call_ledger(method, _ref(tenant_id, never_held)), "PREREQUISITE_NOT_FOUND")

    payout_id = _payout_id()
    await call_ledger(ledger.HoldPayout, _hold(tenant_id, payout_id, 4000))
    # Another tenant's payout of the same id is another payout.
    await _refused(call_ledger(ledger.SettlePayout, _ref(other, payout_id)), "PREREQUISITE_NOT_FOUND")
    # Held but not settled: nothing to return. A refusal stores nothing...
    await _refused(call_ledger(ledger.ReturnPayout, _ref(tenant_id, payout_id)), "PREREQUISITE_NOT_FOUND")
    await call_ledger(ledger.SettlePayout, _ref(tenant_id, payout_id))
    # ... so the same return applies once the payout is settled.
    returned = await call_ledger(ledger.ReturnPayout, _ref(tenant_id, payout_id))
    assert (returned.status, returned.amount_minor, returned.duplicate) == ("posted", 4000, False)

    voided = _payout_id()
    await call_ledger(ledger.HoldPayout, _hold(tenant_id, voided, 1000))
    await call_ledger(ledger.ReleasePayout, _ref(tenant_id, voided))
    await _refused(call_ledger(ledger.ReturnPayout, _ref(tenant_id, voided)), "PREREQUISITE_MISMATCH")

    await _refused(call_ledger(ledger.HoldPayout, _hold(tenant_id, "", 1000)), "INVALID_REQUEST")
    assert await _revenue(ledger, tenant_id) == _numbers(9000, 0, 0, 9000, returned=4000)
    assert await _revenue(ledger, other) == _numbers(9000, 0, 0, 9000)
    await _check_clean(ledger)


async def test_a_hold_beyond_the_available_revenue_is_refused_and_stores_nothing(api: Api, ledger: Any) -> None:
    t = await _tenant_earning(api, 100)
    tenant_id = t["tenant_id"]
    await call_ledger(ledger.HoldPayout, _hold(tenant_id, _payout_id(), 6000))
    payout_id = _payout_id()
    refused = await _refused(call_ledger(ledger.HoldPayout, _hold(tenant_id, payout_id, 3001)), "INSUFFICIENT_BALANCE")
    assert isinstance(refused, errors.PaymentRequired)
    assert await _revenue(ledger, tenant_id) == _numbers(9000, 6000, 0, 9000)
    # The partner earns more: the same request now applies (a refusal kept nothing under the key).
    email = f"p-{uuid.uuid4().hex[:12]}@example.com"
    assert (await api.credit(tenant_id, email, "10")).status == 200
    body = {"player_email": email, "item_id": "gem", "item_name": "Gem", "price": "10", "idempotency_key": "g1"}
    assert (await api.post(PURCHASE, key=t["sdk_key"], json=body)).status == 200
    held = await call_ledger(ledger.HoldPayout, _hold(tenant_id, payout_id, 3001))
    assert (held.status, held.duplicate) == ("pending", False)
    assert await _revenue(ledger, tenant_id) == _numbers(9900, 9001, 0, 9900)
    await _check_clean(ledger)


# -- concurrency ---------------------------------------------------------------------------------------


async def test_twenty_holds_racing_on_one_tenant_never_exceed_what_is_owed(api: Api, ledger: Any, stack: Stack) -> None:
    tenant_id = (await _tenant_earning(api, 100))["tenant_id"]  # 9000 owed

    # 20 x 1000 asked for, 9000 owed: exactly nine fit.
    payout_ids = [_payout_id() for _ in range(20)]
    outcomes = await asyncio.gather(
        *(call_ledger(ledger.HoldPayout, _hold(tenant_id, p, 1000)) for p in payout_ids), return_exceptions=True
    )
    held = [p for p, o in zip(payout_ids, outcomes, strict=True) if isinstance(o, ledger_pb2.TransactionResult)]
    refused = [o for o in outcomes if not isinstance(o, ledger_pb2.TransactionResult)]
    assert {getattr(e, "error_code", repr(e)) for e in refused} == {"INSUFFICIENT_BALANCE"}, refused
    assert len(held) == 9, outcomes
    assert await _revenue(ledger, tenant_id) == _numbers(9000, 9000, 0, 9000)
    await _check_clean(ledger)

    # Released, then raced again with uneven amounts: each applies if it fits what the ones before
    # it left, so every refused one is bigger than what is left at the end.
    await asyncio.gather(*(call_ledger(ledger.ReleasePayout, _ref(tenant_id, p)) for p in held))
    assert await _revenue(ledger, tenant_id) == _numbers(9000, 0, 0, 9000)
    amounts = [300 + 97 * i for i in range(20)]  # 300 .. 2143, 22,430 in all
    outcomes = await asyncio.gather(
        *(call_ledger(ledger.HoldPayout, _hold(tenant_id, _payout_id(), a)) for a in amounts),
        return_exceptions=True,
    )
    took = sum(a for a, o in zip(amounts, outcomes, strict=True) if isinstance(o, ledger_pb2.TransactionResult))
    left_out = [a for a, o in zip(amounts, outcomes, strict=True) if not isinstance(o, ledger_pb2.TransactionResult)]
    refused = [o for o in outcomes if not isinstance(o, ledger_pb2.TransactionResult)]
    assert {getattr(e, "error_code", repr(e)) for e in refused} == {"INSUFFICIENT_BALANCE"}, refused
    revenue = await _revenue(ledger, tenant_id)
    assert revenue == _numbers(9000, took, 0, 9000) and took <= 9000
    assert min(left_out) > revenue["available"], (left_out, revenue)

    # They were applied together: some holds share a batch (one transaction of the ledger's, one
    # clock), and still none overdrew.
    conn = await _ledger_db(stack)
    try:
        batches = await conn.fetchval(
            "SELECT count(DISTINCT created_at) FROM transactions WHERE tenant_id = $1 AND kind = 'payout_hold'"
            " AND status = 'pending'",
            tenant_id,
        )
        holds = await conn.fetchval(
            "SELECT count(*) FROM transactions WHERE tenant_id = $1 AND kind = 'payout_hold' AND status = 'pending'",
            tenant_id,
        )
    finally:
        await conn.close()
    assert batches < holds, (batches, holds)
    await _check_clean(ledger)


async def _same_batch(stack: Stack, hold_ids: list[str]) -> tuple[int, int]:
    """(how many of these holds were resolved in the batch that made them, how many resolved
    ones carry no resolved_at)."""
    conn = await _ledger_db(stack)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE resolved_at = created_at) AS same,"
            " count(*) FILTER (WHERE status <> 'pending' AND resolved_at IS NULL) AS unstamped"
            " FROM transactions WHERE id = ANY($1::text[])",
            hold_ids,
        )
    finally:
        await conn.close()
    return row["same"], row["unstamped"]


async def test_a_hold_and_its_release_sent_at_once(api: Api, ledger: Any, stack: Stack) -> None:
    """A release that reaches the ledger before its hold is refused (PREREQUISITE_NOT_FOUND) and
    applies when sent again; one queued behind its hold, even in the same batch, resolves it.
    Rounds of 8 pairs sent at once until one pair met in a batch (usually the first round)."""
    tenant_id = (await _tenant_earning(api, 100))["tenant_id"]
    settled = 0
    for method, status in ((ledger.SettlePayout, "posted"), (ledger.ReleasePayout, "voided")):
        for _ in range(5):
            payouts = [_payout_id() for _ in range(8)]
            calls = []
            for payout_id in payouts:
                calls += [
                    call_ledger(ledger.HoldPayout, _hold(tenant_id, payout_id, 100)),
                    call_ledger(method, _ref(tenant_id, payout_id)),
                ]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            hold_ids = []
            for i, payout_id in enumerate(payouts):
                hold, release = outcomes[2 * i], outcomes[2 * i + 1]
                assert isinstance(hold, ledger_pb2.TransactionResult), hold
                if not isinstance(release, ledger_pb2.TransactionResult):
                    assert getattr(release, "error_code", None) == "PREREQUISITE_NOT_FOUND", release
                    release = await call_ledger(method, _ref(tenant_id, payout_id))
                assert (release.transaction_id, release.status, release.amount_minor) == (
                    hold.transaction_id,
                    status,
                    100,
                )
                assert (await _txn(ledger, tenant_id, hold.transaction_id)).status == status
                hold_ids.append(hold.transaction_id)
            settled += 800 if status == "posted" else 0
            same, unstamped = await _same_batch(stack, hold_ids)
            assert unstamped == 0
            if same:
                break
        assert same, f"no hold and its {status} release ever shared a batch in 5 rounds"
        assert await _revenue(ledger, tenant_id) == _numbers(9000 - settled, 0, settled, 9000)
    await _check_clean(ledger)


# -- the partner's view, and the read's plan ---------------------------------------------------------


async def test_the_gateway_shows_held_available_and_returned(api: Api, ledger: Any) -> None:
    t = await _tenant_earning(api, 100)
    tenant_id = t["tenant_id"]
    paid, pending = _payout_id(), _payout_id()
    await call_ledger(ledger.HoldPayout, _hold(tenant_id, paid, 2500))
    await call_ledger(ledger.SettlePayout, _ref(tenant_id, paid))
    await call_ledger(ledger.ReturnPayout, _ref(tenant_id, paid))
    await call_ledger(ledger.HoldPayout, _hold(tenant_id, paid + "B", 2500))
    await call_ledger(ledger.SettlePayout, _ref(tenant_id, paid + "B"))
    await call_ledger(ledger.HoldPayout, _hold(tenant_id, pending, 1230))
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.status == 200, resp
    assert resp.body == {
        "owed_usd": "6.50",
        "paid_out_usd": "2.50",
        "lifetime_usd": "9.00",
        "held_usd": "1.23",
        "available_usd": "5.27",
        "returned_usd": "2.50",
        "owed_units": "65",
        "paid_out_units": "25",
        "lifetime_units": "90",
        "held_units": "12.30",
        "available_units": "52.70",
        "returned_units": "25",
        "currency_name": "Gold Coins",
    }
    await _check_clean(ledger)


async def test_the_returned_total_reads_through_its_index(stack: Stack) -> None:
    """GetRevenue's returns are summed from the few rows of a partial index, never by scanning the
    tenant's every transaction (the planner may pick the index: its predicate is the query's)."""
    conn = await _ledger_db(stack)
    try:
        await conn.execute("SET enable_seqscan = off")
        tenant_id = "tn_" + "0" * 26
        rows = await conn.fetch("EXPLAIN " + reads.REVENUE_SQL, chart.revenue(tenant_id), tenant_id)
    finally:
        await conn.close()
    plan = "\n".join(r[0] for r in rows)
    assert "transactions_payout_returns" in plan, plan
