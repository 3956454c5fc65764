"""The ledger under concurrency, against the real LedgerService: a race for the last coins never
overdraws a wallet, and one idempotency key sent fifty times at once moves money once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from invo.v1 import ledger_pb2

from services.common import errors
from services.ledger import chart
from tests.helpers import Api
from tests.ledger_stateful_support import _check_ok, _idem, _key, _posting, call_ledger, ledger

__all__ = ["ledger"]  # the fixture, imported for this module's tests

# -- concurrency --------------------------------------------------------------------------------


async def _topup(ledger: Any, tenant_id: str, player: str, amount: int) -> None:
    res = await call_ledger(
        ledger.Transfer,
        ledger_pb2.TransferRequest(
            tenant_id=tenant_id,
            kind="topup",
            postings=[_posting(chart.WORLD_PROCESSOR, -amount), _posting(player, amount)],
            idempotency=_idem(),
        ),
    )
    assert res.status == "posted" and res.duplicate is False


async def _entries(ledger: Any, tenant_id: str, account: str) -> list[ledger_pb2.Entry]:
    resp = await call_ledger(
        ledger.ListEntries, ledger_pb2.ListEntriesRequest(tenant_id=tenant_id, account=account, limit=1000)
    )
    assert resp.has_more is False
    return list(resp.entries)


async def _balance(ledger: Any, account: str) -> tuple[int, int, int]:
    resp = await call_ledger(ledger.GetBalances, ledger_pb2.GetBalancesRequest(accounts=[account]))
    (b,) = resp.balances
    return (b.balance_minor, b.pending_minor, b.available_minor)


def _purchase(tenant_id: str, email: str, price: int, key: str | None = None) -> ledger_pb2.PurchaseItemRequest:
    return ledger_pb2.PurchaseItemRequest(
        tenant_id=tenant_id,
        player_email=email,
        item_id="potion",
        item_name="Potion",
        price_minor=price,
        quantity=1,
        idempotency=_idem(key),
        network_fee_bps=1000,
        currency_name="Gold Coins",
    )


async def test_a_hundred_concurrent_purchases_never_overdraw(api: Api, ledger: Any) -> None:
    tenant_id = (await api.create_tenant())["tenant_id"]
    email = f"race-{uuid.uuid4().hex[:12]}@example.com"
    player = chart.player(tenant_id, email)
    await _topup(ledger, tenant_id, player, 2000)  # 20 units: exactly 20 potions of 1 unit

    outcomes = await asyncio.gather(
        *(call_ledger(ledger.PurchaseItem, _purchase(tenant_id, email, 100)) for _ in range(100)),
        return_exceptions=True,
    )
    ok = [o for o in outcomes if isinstance(o, ledger_pb2.PurchaseItemResponse)]
    refused = [o for o in outcomes if isinstance(o, errors.InvoError)]
    assert len(ok) == 20 and len(refused) == 80, outcomes
    assert {e.error_code for e in refused} == {"INSUFFICIENT_BALANCE"}
    assert sorted(o.new_balance_minor for o in ok) == list(range(0, 2000, 100))
    assert len({o.transaction_id for o in ok}) == 20
    assert all(o.duplicate is False and o.total_minor == 100 for o in ok)
    assert await _balance(ledger, player) == (0, 0, 0)

    # Never below zero, at any point: every entry's running balance, in commit order.
    entries = await _entries(ledger, tenant_id, player)
    assert len(entries) == 21
    assert [e.entry_id for e in entries] == sorted(e.entry_id for e in entries)
    running = 0
    for e in entries:
        running += e.amount_minor
        assert e.balance_after_minor == running, entries
        assert e.balance_after_minor >= 0, entries
    assert {e.transaction_id for e in entries if e.kind == "item_purchase"} == {o.transaction_id for o in ok}
    revenue = await call_ledger(ledger.GetRevenue, ledger_pb2.GetRevenueRequest(tenant_id=tenant_id))
    assert revenue.owed_minor == 20 * 90
    _check_ok(await call_ledger(ledger.Check, ledger_pb2.CheckRequest()))


@pytest.mark.parametrize("write", ["purchase", "topup"])
async def test_one_key_sent_fifty_times_at_once_moves_money_once(api: Api, ledger: Any, write: str) -> None:
    tenant_id = (await api.create_tenant())["tenant_id"]
    email = f"same-{uuid.uuid4().hex[:12]}@example.com"
    player = chart.player(tenant_id, email)
    await _topup(ledger, tenant_id, player, 1000)
    key = _key()
    request: Any
    if write == "purchase":
        method, request, moved = ledger.PurchaseItem, _purchase(tenant_id, email, 300, key), -300
    else:
        method, moved = ledger.Transfer, 300
        request = ledger_pb2.TransferRequest(
            tenant_id=tenant_id,
            kind="topup",
            postings=[_posting(chart.WORLD_PROCESSOR, -300), _posting(player, 300)],
            idempotency=_idem(key),
        )

    answers = await asyncio.gather(*(call_ledger(method, request) for _ in range(50)))
    assert len({a.transaction_id for a in answers}) == 1
    assert [a.duplicate for a in answers].count(False) == 1
    assert [a.duplicate for a in answers].count(True) == 49
    if write == "purchase":
        assert {a.new_balance_minor for a in answers} == {1000 + moved}
    assert await _balance(ledger, player) == (1000 + moved, 0, 1000 + moved)
    entries = await _entries(ledger, tenant_id, player)
    assert [e.amount_minor for e in entries] == [1000, moved]
    assert entries[1].transaction_id == answers[0].transaction_id
    _check_ok(await call_ledger(ledger.Check, ledger_pb2.CheckRequest()))
