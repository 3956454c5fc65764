"""The `ledger-write` scenario: item purchases straight into the ledger's gRPC API, many per call.

Where the other scenarios measure the network end to end (on two cores the gateway takes most of
the CPU long before the database does), this one asks how fast the ledger and its one PostgreSQL
primary take writes: each client sends `PurchaseItems` calls of `OPS_PER_CALL` purchases (what the
gateway's coalescer sends under load), over 16 tenants, each client its own players. A request
is one call; the scenario reports purchases per second beside it, and bench.observe reports what
the primary did (transactions and entries per second, WAL, fsyncs, CPU by process). Raising the
concurrency (`--concurrency`) until purchases per second stop growing finds the ceiling.
k8s/README.md ("When one PostgreSQL is not enough") reads its figures.
"""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING

from invo.v1 import ledger_pb2, ledger_pb2_grpc

from bench.runner import Run, drive
from services.common import errors, grpcutil

if TYPE_CHECKING:
    from bench.scenarios import Bench

NAME = "ledger-write"
OPS_PER_CALL = 32
TENANTS = 16
PLAYERS_PER_CLIENT = 4
CALL_TIMEOUT_S = 30.0


async def ledger_writes(b: Bench) -> Run:
    tenants = [await b.tenant() for _ in range(TENANTS)]
    assert b.http is not None
    config = {}
    for tenant in tenants:  # its fee and currency, as the gateway passes them
        async with b.http.get(f"{b.gateway}/admin/tenants/{tenant['tenant_id']}", headers=b.admin) as resp:
            config[tenant["tenant_id"]] = await resp.json()
    players = {w: [f"lw{w}-{p}-{b.run_id}@bench.test" for p in range(PLAYERS_PER_CLIENT)] for w in range(b.concurrency)}
    for t, tenant in enumerate(tenants):
        await b.fund(tenant["tenant_id"], [e for w, emails in players.items() if w % TENANTS == t for e in emails])
    channel = grpcutil.channel(b.env["INVO_LEDGER_ADDR"])
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    failed = 0

    async def request(w: int, i: int) -> bool:
        nonlocal failed
        tenant = tenants[w % TENANTS]
        items = [
            ledger_pb2.PurchaseItemRequest(
                tenant_id=tenant["tenant_id"],
                player_email=players[w][k % PLAYERS_PER_CLIENT],
                item_id="bench_item",
                item_name="Bench Item",
                price_minor=1,
                quantity=1,
                idempotency=ledger_pb2.Idempotency(namespace="api", key=f"{NAME}-{b.run_id}-{w}-{i}-{k}"),
                metadata_json="{}",
                network_fee_bps=int(decimal.Decimal(config[tenant["tenant_id"]]["network_fee_percentage"]) * 100),
                currency_name=config[tenant["tenant_id"]]["currency_name"],
            )
            for k in range(OPS_PER_CALL)
        ]
        try:
            answer = await grpcutil.call(
                stub.PurchaseItems, ledger_pb2.PurchaseItemsRequest(items=items), timeout_s=CALL_TIMEOUT_S
            )
        except errors.InvoError:
            return False
        bad = sum(1 for r in answer.results if r.WhichOneof("result") != "ok")
        failed += bad
        return bad == 0

    try:
        run = await drive(NAME, b.duration_s, b.concurrency, request, warmup_s=b.warmup_s)
    finally:
        await channel.close()
    ok_calls = len(run.latencies_s) - run.errors
    run.extra |= {
        "ops_per_call": OPS_PER_CALL,
        "purchases_per_s": round(ok_calls * OPS_PER_CALL / run.elapsed_s, 1) if run.elapsed_s else 0.0,
        "purchases_failed": failed,
    }
    return run
