"""The ledger as payouts use it: four writes keyed by the payout id (the ledger builds the postings
and the keys), so any retry, after a crash or a lost answer, gets the first result. The hold is
taken when the partner asks; posting it (completed) and voiding it (rejected, cancelled, failed)
share one key, so only one of them ever applies; a return credits a posted payout back, once.

Each call's timeout is what is left of the caller's deadline, at most INVO_RPC_TIMEOUT_S.
"""

from __future__ import annotations

from typing import Any

from invo.v1 import ledger_pb2

from services.common import grpcutil


class PayoutLedger:
    def __init__(self, stub: Any, *, timeout_cap_s: float) -> None:
        self.stub = stub
        self.timeout_cap_s = timeout_cap_s

    async def _call(self, method: Any, request: Any, deadline: float | None) -> str:
        result: ledger_pb2.TransactionResult = await grpcutil.call(
            method, request, timeout_s=grpcutil.timeout_within(deadline, cap_s=self.timeout_cap_s)
        )
        return result.transaction_id

    async def hold(self, tenant_id: str, payout_id: str, amount_minor: int, *, deadline: float | None) -> str:
        """Hold the amount on the tenant's owed revenue; refused (402) when less is available."""
        return await self._call(
            self.stub.HoldPayout,
            ledger_pb2.HoldPayoutRequest(tenant_id=tenant_id, payout_id=payout_id, amount_minor=amount_minor),
            deadline,
        )

    async def settle(self, tenant_id: str, payout_id: str, *, deadline: float | None) -> str:
        return await self._call(
            self.stub.SettlePayout, ledger_pb2.PayoutRef(tenant_id=tenant_id, payout_id=payout_id), deadline
        )

    async def release(self, tenant_id: str, payout_id: str, *, deadline: float | None) -> str:
        return await self._call(
            self.stub.ReleasePayout, ledger_pb2.PayoutRef(tenant_id=tenant_id, payout_id=payout_id), deadline
        )

    async def give_back(self, tenant_id: str, payout_id: str, *, deadline: float | None) -> str:
        """An ACH return: the paid amount is owed to the partner again."""
        return await self._call(
            self.stub.ReturnPayout, ledger_pb2.PayoutRef(tenant_id=tenant_id, payout_id=payout_id), deadline
        )
