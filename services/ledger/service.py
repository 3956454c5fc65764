"""LedgerService over gRPC: it validates and translates only. The postings of every domain write
are built in `domain.py` from the chart, the writes applied by the engine, the reads in `reads.py`."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from services.common import errors, loops, metrics
from services.common.config import Settings
from services.common.crypto import request_hash
from services.common.grpcserver import GrpcService
from services.ledger import chart, domain, payouts, reads, statements, subscriptions, validate
from services.ledger.apply import Op
from services.ledger.engine import Engine

log = logging.getLogger("invo.ledger")

EXPIRY_INTERVAL_S = 1.0
EXPIRY_BATCH = 500


def _result_message(result: dict[str, Any]) -> ledger_pb2.TransactionResult:
    created = None
    if "created_at" in result:
        created = datetime.datetime.strptime(result["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    msg = ledger_pb2.TransactionResult(
        transaction_id=result["transaction_id"],
        duplicate=bool(result.get("duplicate")),
        status=result["status"],
        # Absent from results stored before it was recorded: those replay as 0.
        amount_minor=result.get("moved_minor", 0),
        # Sorted: a replay read back from jsonb must list the accounts as the first answer did.
        balances=[
            reads.balance_message(chart.parse(code), snap["balance"], snap["pending"])
            for code, snap in sorted(result.get("balances", {}).items())
        ],
    )
    if created is not None:
        msg.created_at.FromDatetime(created)
    return msg


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, pool: asyncpg.Pool, engine: Engine) -> None:
        self.pool = pool
        self.engine = engine

    # -- writes ---------------------------------------------------------------------------

    async def PurchaseItem(self, request: ledger_pb2.PurchaseItemRequest, context: Any) -> Any:
        result = await self.engine.submit(domain.purchase_item(request))
        response = ledger_pb2.PurchaseItemResponse(
            transaction_id=result["transaction_id"],
            new_balance_minor=result["balances"][result["player"]]["balance"],
            total_minor=result["total"],
            partner_amount_minor=result["partner_amount"],
            network_fee_minor=result["network_fee"],
            duplicate=bool(result["duplicate"]),
        )
        response.created_at.FromDatetime(
            datetime.datetime.strptime(result["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        )
        return response

    async def PurchaseItems(self, request: ledger_pb2.PurchaseItemsRequest, context: Any) -> Any:
        if len(request.items) > validate.BALANCES_MAX:
            raise errors.InvalidRequest(f"at most {validate.BALANCES_MAX} purchases at once")

        async def one(item: ledger_pb2.PurchaseItemRequest) -> ledger_pb2.PurchaseItemResult:
            try:
                return ledger_pb2.PurchaseItemResult(ok=await self.PurchaseItem(item, context))
            except errors.InvoError as exc:
                return ledger_pb2.PurchaseItemResult(
                    error=ledger_pb2.ItemError(
                        grpc_code=errors.code_number(exc.grpc_code),
                        message=exc.message,
                        metadata=[ledger_pb2.MetadataEntry(key=k, value=v) for k, v in errors.to_grpc_metadata(exc)],
                    )
                )

        # Every item goes to the engine at once, so they share its next batches.
        results = await asyncio.gather(*(one(item) for item in request.items))
        return ledger_pb2.PurchaseItemsResponse(results=results)

    async def _domain(self, built: tuple[Op, str]) -> ledger_pb2.TransactionResult:
        op, _account = built
        return _result_message(await self.engine.submit(op))

    async def CreditPurchase(self, request: ledger_pb2.CreditPurchaseRequest, context: Any) -> Any:
        return await self._domain(domain.credit_purchase(request))

    async def ClawBack(self, request: ledger_pb2.ClawBackRequest, context: Any) -> Any:
        return await self._domain(domain.claw_back(request))

    async def FreezeCurrency(self, request: ledger_pb2.FreezeCurrencyRequest, context: Any) -> Any:
        return await self._domain(domain.freeze_currency(request))

    async def ReleaseFreeze(self, request: ledger_pb2.ReleaseFreezeRequest, context: Any) -> Any:
        return await self._domain(domain.release_freeze(request))

    async def AdjustBalance(self, request: ledger_pb2.AdjustBalanceRequest, context: Any) -> Any:
        return await self._domain(domain.adjust_balance(request))

    async def HoldTransfer(self, request: ledger_pb2.HoldTransferRequest, context: Any) -> Any:
        return await self._domain(domain.hold_transfer(request))

    async def SettleTransfer(self, request: ledger_pb2.SettleTransferRequest, context: Any) -> Any:
        return await self._domain(domain.settle_transfer(request))

    async def ReturnTransfer(self, request: ledger_pb2.ReturnTransferRequest, context: Any) -> Any:
        return await self._domain(domain.return_transfer(request))

    async def HoldPayout(self, request: ledger_pb2.HoldPayoutRequest, context: Any) -> Any:
        return await self._domain(payouts.hold_payout(request))

    async def SettlePayout(self, request: ledger_pb2.PayoutRef, context: Any) -> Any:
        return await self._domain(payouts.settle_payout(request))

    async def ReleasePayout(self, request: ledger_pb2.PayoutRef, context: Any) -> Any:
        return await self._domain(payouts.release_payout(request))

    async def ReturnPayout(self, request: ledger_pb2.PayoutRef, context: Any) -> Any:
        return await self._domain(payouts.return_payout(request))

    async def RefundSubscriptionPeriod(self, request: ledger_pb2.RefundSubscriptionPeriodRequest, context: Any) -> Any:
        return await self._domain(subscriptions.refund_period(request))

    async def Transfer(self, request: ledger_pb2.TransferRequest, context: Any) -> Any:
        tenant_id = validate.tenant(request.tenant_id)
        postings = validate.postings(request.postings, tenant_id)
        allow_debt = frozenset(request.allow_debt)
        codes = {c for c, _ in postings}
        if not allow_debt <= codes or any(chart.parse(c).kind != "player" for c in allow_debt):
            raise errors.InvalidRequest("allow_debt names only player accounts of this transaction")
        op = domain.posting_op(
            tenant_id=tenant_id,
            idem=request.idempotency,
            kind=validate.kind(request.kind),
            postings=postings,
            metadata=validate.metadata(request.metadata_json),
            allow_debt=allow_debt,
            event=validate.event(request.event_type, request.event_data_json),
        )
        return _result_message(await self.engine.submit(op))

    async def CreateHold(self, request: ledger_pb2.CreateHoldRequest, context: Any) -> Any:
        tenant_id = validate.tenant(request.tenant_id)
        scope, key = validate.scoped_key(tenant_id, request.idempotency)
        postings = validate.postings(request.postings, tenant_id)
        metadata = validate.metadata(request.metadata_json)
        kind = validate.kind(request.kind)
        if not 1 <= request.expires_in_ms <= validate.HOLD_EXPIRY_MS_MAX:
            raise errors.InvalidRequest("expires_in_ms must be from 1 ms to 30 days")
        digest = request_hash(
            {"op": "hold", "kind": kind, "postings": postings, "metadata": metadata, "expires": request.expires_in_ms}
        )
        result = await self.engine.submit(
            Op(
                kind="hold",
                tenant_id=tenant_id,
                scope=scope,
                key=key,
                request_hash=digest,
                txn_kind=kind,
                postings=postings,
                metadata=metadata,
                expires_in_ms=request.expires_in_ms,
            )
        )
        return _result_message(result)

    async def _resolve(self, request: ledger_pb2.ResolveHoldRequest, kind: str) -> Any:
        tenant_id = validate.tenant(request.tenant_id)
        scope, key = validate.scoped_key(tenant_id, request.idempotency)
        if not validate.TXN_ID_RE.match(request.hold_id):
            raise errors.NotFound("No such hold.", error_code="HOLD_NOT_FOUND")
        event = validate.event(request.event_type, request.event_data_json)
        result = await self.engine.submit(
            Op(
                kind=kind,
                tenant_id=tenant_id,
                scope=scope,
                key=key,
                request_hash=request_hash({"op": kind, "hold_id": request.hold_id}),
                hold_id=request.hold_id,
                event=(lambda _r: event) if event else None,
            )
        )
        return _result_message(result)

    async def PostHold(self, request: ledger_pb2.ResolveHoldRequest, context: Any) -> Any:
        return await self._resolve(request, "post")

    async def VoidHold(self, request: ledger_pb2.ResolveHoldRequest, context: Any) -> Any:
        return await self._resolve(request, "void")

    async def expire_holds(self, limit: int) -> int:
        rows = await self.pool.fetch(
            "SELECT id, tenant_id FROM transactions WHERE status = 'pending' AND expires_at <= now()"
            " ORDER BY expires_at LIMIT $1",
            limit,
        )
        results = await asyncio.gather(
            *(
                self.engine.submit(
                    Op(
                        kind="void",
                        tenant_id=r["tenant_id"],
                        scope="system:expiry",
                        key=r["id"],
                        request_hash=request_hash({"op": "expire", "hold_id": r["id"]}),
                        hold_id=r["id"],
                        quiet=True,
                    )
                )
                for r in rows
            )
        )
        return sum(1 for r in results if r["status"] == "voided" and not r["duplicate"] and r.get("balances"))

    async def ExpireHolds(self, request: ledger_pb2.ExpireHoldsRequest, context: Any) -> Any:
        limit = request.limit or EXPIRY_BATCH
        if not 1 <= limit <= EXPIRY_BATCH:
            raise errors.InvalidRequest(f"limit must be from 1 to {EXPIRY_BATCH}")
        return ledger_pb2.ExpireHoldsResponse(voided=await self.expire_holds(limit))

    async def expiry_round(self) -> float | None:
        """One round of the hold-expiry loop: a full batch goes again at once."""
        voided = await self.expire_holds(EXPIRY_BATCH)
        if voided:
            log.info("expired %d holds", voided)
        return 0.0 if voided == EXPIRY_BATCH else None

    # -- reads ----------------------------------------------------------------------------

    async def GetBalances(self, request: ledger_pb2.GetBalancesRequest, context: Any) -> Any:
        if len(request.accounts) > validate.BALANCES_MAX:
            raise errors.InvalidRequest(f"at most {validate.BALANCES_MAX} accounts at once")
        infos = [chart.parse(code) for code in request.accounts]
        return ledger_pb2.GetBalancesResponse(balances=await reads.balances(self.pool, infos))

    async def GetPlayerBalances(self, request: ledger_pb2.GetPlayerBalancesRequest, context: Any) -> Any:
        if len(request.players) > validate.BALANCES_MAX:
            raise errors.InvalidRequest(f"at most {validate.BALANCES_MAX} players at once")
        infos = [chart.player_info(validate.tenant(p.tenant_id), p.player_email) for p in request.players]
        return ledger_pb2.GetPlayerBalancesResponse(balances=await reads.balances(self.pool, infos))

    async def GetTransaction(self, request: ledger_pb2.GetTransactionRequest, context: Any) -> Any:
        return await reads.transaction(self.pool, request.transaction_id, request.tenant_id)

    async def ListEntries(self, request: ledger_pb2.ListEntriesRequest, context: Any) -> Any:
        return await reads.entries(self.pool, request)

    async def ExportBalances(
        self, request: ledger_pb2.ExportBalancesRequest, context: Any
    ) -> AsyncIterator[ledger_pb2.ExportBalancesChunk]:
        tenant_id = validate.tenant(request.tenant_id)
        chunk_size = validate.limit(
            request.chunk_size, default=1000, most=validate.EXPORT_CHUNK_MAX, field="chunk_size"
        )
        async for chunk in reads.export(self.pool, tenant_id, chunk_size):
            yield chunk

    async def GetRevenue(self, request: ledger_pb2.GetRevenueRequest, context: Any) -> Any:
        return await reads.revenue(self.pool, validate.tenant(request.tenant_id))

    async def GetStatement(self, request: ledger_pb2.GetStatementRequest, context: Any) -> Any:
        return await statements.statement(self.pool, request)

    async def GetVolumes(self, request: ledger_pb2.GetVolumesRequest, context: Any) -> Any:
        return await statements.volumes(self.pool, request)

    async def Check(self, request: ledger_pb2.CheckRequest, context: Any) -> Any:
        return await reads.check(self.pool)


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    engine = Engine(pool)
    servicer = LedgerServicer(pool, engine)
    svc.background(engine.run(), "ledger-writer")
    svc.on_shutdown(engine.close)  # before the pool closes: batches in flight finish
    # Supervised: a database outage fails rounds, never the loop (and with it the service).
    svc.background(
        loops.supervised("hold-expiry", servicer.expiry_round, interval_s=EXPIRY_INTERVAL_S, log=log), "hold-expiry"
    )

    async def count_holds() -> None:  # the partial index of pending transactions: a few rows
        rows = await pool.fetch("SELECT kind, count(*) AS n FROM transactions WHERE status = 'pending' GROUP BY kind")
        metrics.set_counts(metrics.LEDGER_PENDING_HOLDS, {r["kind"]: r["n"] for r in rows})

    svc.background(
        metrics.refresh_forever("holds", count_holds, interval_s=settings.metrics_refresh_s), "metrics-holds"
    )
    svc.add(
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
        servicer,
        ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    )
