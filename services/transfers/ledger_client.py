"""The ledger as transfers use it: three domain writes, each keyed by the transfer's id (the ledger
builds the postings and the keys), so a retry after a crash or a lost answer asks for the same
write and gets its first result. The ledger applies a settlement or a return only once, and only
if it fits the hold.

Each call's timeout is what is left of the caller's deadline, at most INVO_RPC_TIMEOUT_S.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2

from services.common import grpcutil


@dataclasses.dataclass(frozen=True)
class Written:
    transaction_id: str
    balance_minor: int | None  # the player's wallet after the write (None if the ledger did not say)


class TransferLedger:
    def __init__(self, stub: Any, *, timeout_cap_s: float) -> None:
        self.stub = stub
        self.timeout_cap_s = timeout_cap_s

    async def _call(self, method: Any, request: Any, deadline: float | None) -> Written:
        result: ledger_pb2.TransactionResult = await grpcutil.call(
            method, request, timeout_s=grpcutil.timeout_within(deadline, cap_s=self.timeout_cap_s)
        )
        balance = next((b.balance_minor for b in result.balances if b.player_email), None)
        return Written(result.transaction_id, balance)

    async def hold(self, row: asyncpg.Record, *, deadline: float | None) -> Written:
        """amount + fee from the sender into escrow: refused (402) when the wallet is too low or in debt."""
        return await self._call(
            self.stub.HoldTransfer,
            ledger_pb2.HoldTransferRequest(
                source_tenant_id=row["source_tenant_id"],
                sender_email=row["sender_email"],
                amount_minor=row["amount_minor"],
                fee_minor=row["fee_minor"],
                transfer_id=row["transfer_id"],
            ),
            deadline,
        )

    async def settle(self, row: asyncpg.Record, *, deadline: float | None) -> Written:
        """The escrow to the recipient and the fee's three shares, in one ledger transaction."""
        return await self._call(
            self.stub.SettleTransfer,
            ledger_pb2.SettleTransferRequest(
                source_tenant_id=row["source_tenant_id"],
                destination_tenant_id=row["destination_tenant_id"],
                recipient_email=row["recipient_email"],
                amount_minor=row["amount_minor"],
                source_fee_minor=row["source_fee_minor"],
                destination_fee_minor=row["destination_fee_minor"],
                network_fee_minor=row["network_fee_minor"],
                transfer_id=row["transfer_id"],
            ),
            deadline,
        )

    async def give_back(self, row: asyncpg.Record, *, deadline: float | None) -> Written:
        """The escrow, whole (amount and fee), back to the sender."""
        return await self._call(
            self.stub.ReturnTransfer,
            ledger_pb2.ReturnTransferRequest(
                source_tenant_id=row["source_tenant_id"],
                sender_email=row["sender_email"],
                amount_minor=row["amount_minor"] + row["fee_minor"],
                transfer_id=row["transfer_id"],
            ),
            deadline,
        )
