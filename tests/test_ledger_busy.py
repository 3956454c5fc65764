"""A stalled ledger answers 503 (retry with the same key), promptly, and changes nothing; the same
requests succeed once the stall is over."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from services.common import errors, grpcutil
from services.ledger import chart
from services.ledger.engine import LEDGER_WRITE_LOCK
from tests.helpers import Api, eventually


async def test_purchases_waiting_on_a_stalled_write_lock_get_503_once_and_then_succeed(stack: Stack, api: Api) -> None:
    t = await api.create_tenant()
    credit = await api.credit(t["tenant_id"], "p@example.com", "10", reason="test", idempotency_key="busy-fund")
    assert credit.status == 200, credit

    def purchase(i: int) -> ledger_pb2.PurchaseItemRequest:
        return ledger_pb2.PurchaseItemRequest(
            tenant_id=t["tenant_id"],
            player_email="p@example.com",
            item_id="gem",
            item_name="Gem",
            price_minor=100,  # 1.00: minor units are hundredths
            network_fee_bps=1000,
            quantity=1,
            idempotency=ledger_pb2.Idempotency(namespace="api", key=f"busy-{i}"),
        )

    # Another session holds the ledger's write lock: as if the batch ahead stalled on I/O.
    holder = await asyncpg.connect(stack.env["INVO_DATABASE_URL"])
    ch = grpcutil.channel(stack.env["INVO_LEDGER_ADDR"])
    try:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        await holder.execute("SELECT pg_advisory_lock($1)", LEDGER_WRITE_LOCK)
        started = time.monotonic()
        # One call with three purchases: they reach the ledger's writer together, as one batch.
        resp = await grpcutil.call(
            stub.PurchaseItems, ledger_pb2.PurchaseItemsRequest(items=[purchase(i) for i in range(3)]), timeout_s=30
        )
        waited = time.monotonic() - started
        codes = [errors.from_code_number(r.error.grpc_code, r.error.message, []).http_status for r in resp.results]
        assert codes == [503, 503, 503], resp
        # One statement timeout (5 s) for the batch, not one more per purchase retried alone.
        assert waited < 8, waited
        await holder.execute("SELECT pg_advisory_unlock($1)", LEDGER_WRITE_LOCK)

        balance = await api.get("/api/players/balance?player_email=p@example.com", key=t["sdk_key"])
        assert balance.body["balance"] == "10"  # nothing was taken
        done = await asyncio.gather(*(grpcutil.call(stub.PurchaseItem, purchase(i), timeout_s=30) for i in range(3)))
        assert [d.duplicate for d in done] == [False, False, False]
        assert sorted(d.new_balance_minor for d in done) == [700, 800, 900]
    finally:
        await ch.close()
        await holder.close()


async def test_hold_expiry_survives_a_stalled_database_and_voids_the_hold_afterwards(stack: Stack, api: Api) -> None:
    """The expiry loop's rounds fail while the write lock is stalled (each void waits out the
    statement timeout); the loop goes on, the service stays up, and the hold is voided after."""
    t = await api.create_tenant()
    tenant_id = t["tenant_id"]
    ch = grpcutil.channel(stack.env["INVO_LEDGER_ADDR"])
    holder = await asyncpg.connect(stack.env["INVO_DATABASE_URL"])
    log_path = stack.logs / "ledger.log"
    log_size_before = log_path.stat().st_size
    try:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        player = chart.player(tenant_id, "expiry@example.com")
        await grpcutil.call(
            stub.Transfer,
            ledger_pb2.TransferRequest(
                tenant_id=tenant_id,
                kind="topup",
                postings=[
                    ledger_pb2.Posting(account=chart.WORLD_PROCESSOR, amount_minor=-500),
                    ledger_pb2.Posting(account=player, amount_minor=500),
                ],
                idempotency=ledger_pb2.Idempotency(namespace="busy", key="expiry-topup"),
            ),
            timeout_s=30,
        )
        hold = await grpcutil.call(
            stub.CreateHold,
            ledger_pb2.CreateHoldRequest(
                tenant_id=tenant_id,
                kind="test_hold",
                postings=[
                    ledger_pb2.Posting(account=player, amount_minor=-200),
                    ledger_pb2.Posting(account=chart.TRANSFERS_HELD, amount_minor=200),
                ],
                idempotency=ledger_pb2.Idempotency(namespace="busy", key="expiry-hold"),
                # Long enough that the stall below begins first; the expiry loop finds it expired
                # while the write lock is held.
                expires_in_ms=1500,
            ),
            timeout_s=30,
        )
        # The stall starts once the hold exists (its own batch needs the lock).
        await holder.execute("SELECT pg_advisory_lock($1)", LEDGER_WRITE_LOCK)

        def failed_rounds() -> bool:
            with log_path.open("rb") as f:
                f.seek(log_size_before)
                return b"hold-expiry round failed" in f.read()

        async def hit_the_stall() -> bool:
            return failed_rounds()

        await eventually(hit_the_stall, timeout_s=30)
        assert stack.dead() == []
        await holder.execute("SELECT pg_advisory_unlock($1)", LEDGER_WRITE_LOCK)

        async def voided() -> bool:
            txn = await grpcutil.call(
                stub.GetTransaction,
                ledger_pb2.GetTransactionRequest(transaction_id=hold.transaction_id, tenant_id=tenant_id),
                timeout_s=30,
            )
            return bool(txn.status == "voided")

        await eventually(voided, timeout_s=30)
        balances = await grpcutil.call(stub.GetBalances, ledger_pb2.GetBalancesRequest(accounts=[player]), timeout_s=30)
        assert [(b.balance_minor, b.pending_minor) for b in balances.balances] == [(500, 0)]
        assert stack.dead() == []
    finally:
        await ch.close()
        await holder.close()
