"""PayoutsService over gRPC: it translates protobuf to the payout modules and back, and nothing else.

- store.py: payout rows, their lifecycle and audit trail, the lease;
- requests.py: a payout asked for (the ledger's hold), and cancelled;
- review.py: approval (maker-checker, two approvers above a threshold) and rejection;
- progress.py: the payment order sent to the ACH provider, and the payout moved by what it says;
- moves.py: a move with its event, and the ledger writes each status calls for;
- sweep.py: the loop that finishes what a crash or an outage interrupted;
- bank.py: routing and account numbers checked, account numbers sealed; rekey.py re-seals them;
- provider.py: Modern Treasury through its SDK, behind the circuit breaker;
- ledger_client.py, messages.py: the ledger's payout writes; the answers and events.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2_grpc, payouts_pb2, payouts_pb2_grpc

from services.common import errors, grpcutil, loops, metrics
from services.common.config import Settings
from services.common.crypto import Keyring
from services.common.grpcserver import GrpcService
from services.payouts import messages, progress, requests, review
from services.payouts.bank import Vault
from services.payouts.deps import Deps
from services.payouts.ledger_client import PayoutLedger
from services.payouts.provider import AchProvider
from services.payouts.store import PUBLIC_STATUSES, PayoutStore
from services.payouts.sweep import sweep_once

log = logging.getLogger("invo.payouts")


class PayoutsServicer(payouts_pb2_grpc.PayoutsServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def _answer(self, row: asyncpg.Record, *, duplicate: bool = False) -> payouts_pb2.PayoutAnswer:
        payout_id = row["payout_id"]
        return payouts_pb2.PayoutAnswer(
            payout=messages.payout_message(
                row, approvals=await self.d.store.approvals(payout_id), history=await self.d.store.history(payout_id)
            ),
            duplicate=duplicate,
        )

    async def RequestPayout(self, request: payouts_pb2.RequestPayoutRequest, context: Any) -> Any:
        row, duplicate = await requests.request_payout(self.d, request, deadline=grpcutil.deadline_of(context))
        return await self._answer(row, duplicate=duplicate)

    async def GetPayout(self, request: payouts_pb2.PayoutLookup, context: Any) -> Any:
        row = await self.d.store.visible(request.payout_id, request.tenant_id, any_tenant=request.any_tenant)
        return await self._answer(row)

    async def ListPayouts(self, request: payouts_pb2.ListPayoutsRequest, context: Any) -> Any:
        if request.status and request.status not in PUBLIC_STATUSES:
            raise errors.InvalidRequest(f"status must be one of {', '.join(PUBLIC_STATUSES)}")
        if not request.any_tenant and not request.tenant_id:
            raise errors.InvalidRequest("a tenant_id, or any_tenant")
        rows, has_more = await self.d.store.page(
            tenant_id=request.tenant_id,
            any_tenant=request.any_tenant and not request.tenant_id,
            status=request.status,
            starting_after=request.starting_after,
            limit=request.limit,
        )
        approvals = await self.d.store.approvals_of([r["payout_id"] for r in rows])
        return payouts_pb2.ListPayoutsResponse(
            payouts=[messages.payout_message(r, approvals=approvals[r["payout_id"]]) for r in rows], has_more=has_more
        )

    async def CancelPayout(self, request: payouts_pb2.PayoutLookup, context: Any) -> Any:
        row, duplicate = await requests.cancel(
            self.d, request.tenant_id, request.payout_id, deadline=grpcutil.deadline_of(context)
        )
        return await self._answer(row, duplicate=duplicate)

    async def ApprovePayout(self, request: payouts_pb2.ReviewRequest, context: Any) -> Any:
        row = await review.approve(
            self.d, request.payout_id, request.operator_id, deadline=grpcutil.deadline_of(context)
        )
        return await self._answer(row)

    async def RejectPayout(self, request: payouts_pb2.ReviewRequest, context: Any) -> Any:
        row = await review.reject(
            self.d, request.payout_id, request.operator_id, request.reason, deadline=grpcutil.deadline_of(context)
        )
        return await self._answer(row)

    async def ReceiveProviderEvent(self, request: payouts_pb2.ProviderEvent, context: Any) -> Any:
        duplicate, ignored = await progress.receive(self.d, request.webhook_id, request.body_json)
        return payouts_pb2.ProviderEventAck(duplicate=duplicate, ignored=ignored)

    async def Sweep(self, request: payouts_pb2.PayoutSweepRequest, context: Any) -> Any:
        out = await sweep_once(self.d)
        return payouts_pb2.PayoutSweepResponse(
            created=out.created, dispatched=out.dispatched, ledger=out.ledger, polled=out.polled
        )


async def setup(svc: GrpcService, settings: Settings, pool: asyncpg.Pool) -> None:
    settings.require("data_keys", "key_pepper", "ach_organization_id", "ach_api_key", "ach_originating_account_id")
    provider = AchProvider(
        api_base=settings.ach_api_base,
        organization_id=settings.ach_organization_id,
        api_key=settings.ach_api_key,
        originating_account_id=settings.ach_originating_account_id,
        timeout_s=settings.ach_timeout_s,
        failures_max=settings.breaker_failures_max,
        cooldown_s=settings.breaker_cooldown_s,
    )
    svc.on_shutdown(provider.close)
    ledger_channel = grpcutil.channel(settings.ledger_addr)
    svc.on_shutdown(ledger_channel.close)
    # A worker's lease outlasts its provider and ledger calls with a margin.
    lease_s = settings.ach_timeout_s * 2 + settings.rpc_timeout_s + 5
    deps = Deps(
        pool=pool,
        store=PayoutStore(pool, lease_s=lease_s),
        ledger=PayoutLedger(ledger_pb2_grpc.LedgerServiceStub(ledger_channel), timeout_cap_s=settings.rpc_timeout_s),
        provider=provider,
        vault=Vault(Keyring(settings.data_keys)),
        pepper=settings.key_pepper,
        min_usd_cents=settings.payout_min_usd_cents,
        dual_approval_usd_cents=settings.payout_dual_approval_usd_cents,
        lease_s=lease_s,
    )

    async def sweep_round() -> float | None:
        out = await sweep_once(deps)
        return 0.0 if out.busy else None

    svc.background(
        loops.supervised("payout-sweep", sweep_round, interval_s=settings.payout_sweep_interval_s, log=log),
        "payout-sweep",
    )

    async def count_payouts() -> None:  # payouts_by_status (status, payout_id): an index-only count
        rows = await pool.fetch("SELECT status, count(*) AS n FROM payouts GROUP BY status")
        metrics.set_counts(metrics.PAYOUTS, {r["status"]: r["n"] for r in rows}, known=PUBLIC_STATUSES)

    svc.background(
        metrics.refresh_forever("payouts", count_payouts, interval_s=settings.metrics_refresh_s), "metrics-payouts"
    )
    svc.add(
        payouts_pb2_grpc.add_PayoutsServiceServicer_to_server,
        PayoutsServicer(deps),
        payouts_pb2.DESCRIPTOR.services_by_name["PayoutsService"].full_name,
    )
