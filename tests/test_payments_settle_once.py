"""Settlement.complete in one payments process: a second caller for an order being completed right
now (the processor's webhook racing our own call's answer) waits for the first and takes its
result, and asks the ledger nothing; if the first fails, the second completes the order itself.

The ledger is the stack's real one, behind a gate that counts CreditPurchase calls and holds the
first until the test opens it; the order and its processor event are rows in payments' schema.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from invo.v1 import ledger_pb2_grpc

from devstack.stack import Stack
from services.common import errors, grpcutil, money
from services.common.config import Settings
from services.payments.ledger_client import Credit, LedgerClient
from services.payments.orders import NewOrder, OrderStore
from services.payments.processor import Outcome
from services.payments.settlement import Settlement
from tests.helpers import Api
from tests.payments_support import balance, check_ledger, email, payments_db, ref

__all__ = ["payments_db"]  # the fixture, imported for this module's tests


class GatedLedger(LedgerClient):
    """The real ledger client; each CreditPurchase is counted, and waits for `gate` first."""

    def __init__(self, stub: Any, *, fail_first: bool = False) -> None:
        super().__init__(stub, timeout_cap_s=10)
        self.gate = asyncio.Event()
        self.calls = 0
        self.fail_first = fail_first

    async def credit_purchase(self, row: asyncpg.Record, payment_intent_id: str, *, deadline: float | None) -> Credit:
        self.calls += 1
        first = self.calls == 1
        await self.gate.wait()
        if first and self.fail_first:
            raise errors.Unavailable("the ledger is away (the test's)")
        return await super().credit_purchase(row, payment_intent_id, deadline=deadline)


@pytest.fixture
async def payments(stack: Stack, payments_db: asyncpg.Pool) -> AsyncIterator[tuple[asyncpg.Pool, Any]]:
    channel = grpcutil.channel(Settings.from_env(stack.env).ledger_addr)
    try:
        yield payments_db, ledger_pb2_grpc.LedgerServiceStub(channel)
    finally:
        await channel.close()


async def _order(api: Api, pool: asyncpg.Pool) -> tuple[dict[str, Any], asyncpg.Record, str]:
    """A pending order of 5.00 USD in a new tenant, and an unhandled processor event for it."""
    t = await api.create_tenant()
    store = OrderStore(pool, lease_s=60)
    async with pool.acquire() as conn, conn.transaction():
        row = await store.insert(
            conn,
            NewOrder(
                order_id=f"ord_{secrets.token_hex(13).upper()[:26]}",
                tenant_id=t["tenant_id"],
                purchase_reference=ref(),
                request_hash=b"h",
                environment="sandbox",
                player_email=email(),
                identity_id="i",
                usd_cents=500,
                currency_amount_minor=500 * money.MINOR_PER_CENT,
                currency_name="Coins",
                payment_method_id="pm_card_visa",
                metadata_json="{}",
            ),
        )
    assert row is not None
    event_id = f"evt_{secrets.token_hex(12)}"
    # A type no handler takes: the service's recovery loop applies unhandled events of the types it
    # handles, and would mark this one first (what is marked here is Settlement.complete's doing).
    await pool.execute(
        "INSERT INTO processor_inbox (event_id, type, payload) VALUES ($1, 'test.settle_once', '{}')", event_id
    )
    return t, row, event_id


def _succeeded(row: asyncpg.Record) -> Outcome:
    return Outcome(status="succeeded", payment_intent_id=f"pi_{row['order_id']}", amount=500, currency="usd")


async def _race(settlement: Settlement, row: asyncpg.Record, event_id: str) -> tuple[Any, Any]:
    outcome = _succeeded(row)
    ours = asyncio.create_task(settlement.complete(row, outcome, source="api", deadline=None))
    await asyncio.sleep(0)  # a yield, not a wait: `ours` runs up to the gated ledger call
    webhook = asyncio.create_task(settlement.complete(row, outcome, source="webhook", deadline=None, event_id=event_id))
    await asyncio.sleep(0)  # `webhook` runs up to its first wait (on `ours`, or on the gate)
    settlement.ledger.gate.set()  # type: ignore[attr-defined]
    results = await asyncio.wait_for(asyncio.gather(ours, webhook, return_exceptions=True), 30)
    return results[0], results[1]


async def test_the_webhook_racing_our_answer_waits_for_it_and_asks_the_ledger_nothing(
    api: Api, payments: tuple[asyncpg.Pool, Any]
) -> None:
    pool, stub = payments
    t, row, event_id = await _order(api, pool)
    ledger = GatedLedger(stub)
    ours, webhook = await _race(Settlement(OrderStore(pool, lease_s=60), ledger), row, event_id)
    assert ledger.calls == 1
    done, already = ours
    assert done["status"] == "completed" and already is False
    assert webhook == (done, True)
    note = await pool.fetchval("SELECT note FROM processor_inbox WHERE event_id = $1", event_id)
    assert note == "order settled already"
    history = await pool.fetch(
        "SELECT to_status, source FROM order_transitions WHERE order_id = $1 ORDER BY id", row["order_id"]
    )
    assert [(h["to_status"], h["source"]) for h in history] == [("pending_payment", "api"), ("completed", "api")]
    assert await balance(api, t, row["player_email"]) == "50"
    await check_ledger(api)


async def test_when_the_first_fails_the_waiting_webhook_completes_the_order_itself(
    api: Api, payments: tuple[asyncpg.Pool, Any]
) -> None:
    pool, stub = payments
    t, row, event_id = await _order(api, pool)
    ledger = GatedLedger(stub, fail_first=True)
    ours, webhook = await _race(Settlement(OrderStore(pool, lease_s=60), ledger), row, event_id)
    assert isinstance(ours, errors.Unavailable)
    assert ledger.calls == 2
    done, already = webhook
    assert done["status"] == "completed" and already is False
    note = await pool.fetchval("SELECT note FROM processor_inbox WHERE event_id = $1", event_id)
    assert note == "applied"
    assert await balance(api, t, row["player_email"]) == "50"
    await check_ledger(api)
