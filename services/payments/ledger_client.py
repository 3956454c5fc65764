"""The ledger as payments uses it: domain writes only, never an account code (the ledger builds the
postings from its chart). Every write carries an idempotency key derived from the payments row it
serves, so a retry after a crash or a lost answer asks for the same write and gets its first result.

Each call's timeout is what is left of the caller's deadline, at most INVO_RPC_TIMEOUT_S: we never
keep working for a caller who has gone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
from invo.v1 import ledger_pb2

from services.common import grpcutil

NAMESPACE = "payments"


@dataclasses.dataclass(frozen=True)
class Credit:
    transaction_id: str
    balance_minor: int | None  # the wallet after the write (None if the ledger did not say)
    amount_minor: int = 0  # what the write moved or held, where the ledger chose it (a freeze)
    status: str = "posted"


def _credit(result: ledger_pb2.TransactionResult) -> Credit:
    balance = next((b.balance_minor for b in result.balances if b.player_email), None)
    return Credit(
        transaction_id=result.transaction_id,
        balance_minor=balance,
        amount_minor=result.amount_minor,
        status=result.status,
    )


def _key(key: str) -> ledger_pb2.Idempotency:
    return ledger_pb2.Idempotency(namespace=NAMESPACE, key=key)


class LedgerClient:
    def __init__(self, stub: Any, *, timeout_cap_s: float) -> None:
        self.stub = stub
        self.timeout_cap_s = timeout_cap_s

    async def _call(self, method: Any, request: Any, deadline: float | None) -> Credit:
        result: ledger_pb2.TransactionResult = await grpcutil.call(
            method, request, timeout_s=grpcutil.timeout_within(deadline, cap_s=self.timeout_cap_s)
        )
        return _credit(result)

    async def credit_purchase(self, row: asyncpg.Record, payment_intent_id: str, *, deadline: float | None) -> Credit:
        return await self._call(
            self.stub.CreditPurchase,
            ledger_pb2.CreditPurchaseRequest(
                tenant_id=row["tenant_id"],
                player_email=row["player_email"],
                amount_minor=row["currency_amount"],
                idempotency=_key(f"order:{row['order_id']}"),
                order_id=row["order_id"],
                payment_intent_id=payment_intent_id,
            ),
            deadline,
        )

    async def claw_back(
        self,
        order: asyncpg.Record,
        amount_minor: int,
        *,
        key: str,
        reason: str,
        release_hold_id: str = "",
        deadline: float | None,
    ) -> Credit:
        """Take currency back from the player (a refund, a lost dispute), whatever the wallet holds:
        what was spent becomes a debt. `release_hold_id` voids a dispute's freeze in the same write."""
        return await self._call(
            self.stub.ClawBack,
            ledger_pb2.ClawBackRequest(
                tenant_id=order["tenant_id"],
                player_email=order["player_email"],
                amount_minor=amount_minor,
                idempotency=_key(key),
                reason=reason,
                order_id=order["order_id"],
                release_hold_id=release_hold_id,
            ),
            deadline,
        )

    async def freeze(
        self, order: asyncpg.Record, amount_minor: int, *, key: str, dispute_id: str, deadline: float | None
    ) -> Credit:
        """Hold up to `amount_minor` of what the player still has; the ledger decides how much, in
        its batch, so no spend can race it. status "none" when nothing could be held."""
        return await self._call(
            self.stub.FreezeCurrency,
            ledger_pb2.FreezeCurrencyRequest(
                tenant_id=order["tenant_id"],
                player_email=order["player_email"],
                amount_minor=amount_minor,
                idempotency=_key(key),
                order_id=order["order_id"],
                dispute_id=dispute_id,
            ),
            deadline,
        )

    async def release(self, tenant_id: str, hold_id: str, *, key: str, deadline: float | None) -> Credit:
        return await self._call(
            self.stub.ReleaseFreeze,
            ledger_pb2.ReleaseFreezeRequest(tenant_id=tenant_id, hold_id=hold_id, idempotency=_key(key)),
            deadline,
        )

    async def balance(self, order: asyncpg.Record, *, deadline: float | None) -> int:
        """The player's balance now (for an event that changed nothing in the ledger)."""
        resp: ledger_pb2.GetPlayerBalancesResponse = await grpcutil.call(
            self.stub.GetPlayerBalances,
            ledger_pb2.GetPlayerBalancesRequest(
                players=[ledger_pb2.PlayerRef(tenant_id=order["tenant_id"], player_email=order["player_email"])]
            ),
            timeout_s=grpcutil.timeout_within(deadline, cap_s=self.timeout_cap_s),
        )
        return resp.balances[0].balance_minor if resp.balances else 0
