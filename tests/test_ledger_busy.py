"""A stalled ledger answers 503 (retry with the same key), promptly, and changes nothing; the same
requests succeed once the stall is over."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from services.common import errors, grpcutil
from services.common.stack import Stack
from services.ledger.engine import LEDGER_WRITE_LOCK
from tests.helpers import Api


async def test_purchases_waiting_on_a_stalled_write_lock_get_503_once_and_then_succeed(stack: Stack, api: Api) -> None:
    t = await api.create_tenant()
    credit = await api.post(
        "/admin/players/credit",
        admin=True,
        json={
            "tenant_id": t["tenant_id"],
            "player_email": "p@example.com",
            "amount": "10",
            "reason": "test",
            "idempotency_key": "busy-fund",
        },
    )
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
