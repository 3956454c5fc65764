"""What the tests against the real LedgerService (below the gateway) share: the RPC timeout, fresh
idempotency keys and postings, balances as tuples, and the check of the global invariants every
test must leave true.

And the model's records, for the state machine in tests/test_ledger_model.py."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from services.common import grpcutil

TIMEOUT_S = 30.0
NAMESPACE = "stateful"


def _key() -> str:
    # uuid4, not `random`: hypothesis seeds `random`, and a replayed example must not reuse keys.
    return f"k-{uuid.uuid4().hex}"


def _idem(key: str | None = None) -> ledger_pb2.Idempotency:
    return ledger_pb2.Idempotency(namespace=NAMESPACE, key=key or _key())


def _posting(account: str, amount: int) -> ledger_pb2.Posting:
    return ledger_pb2.Posting(account=account, amount_minor=amount)


def _triples(balances: Any) -> list[tuple[str, int, int, int]]:
    return [(b.account, b.balance_minor, b.pending_minor, b.available_minor) for b in balances]


def _check_ok(check: ledger_pb2.CheckResponse) -> None:
    """The global invariants over the whole shared database: every test must leave them true."""
    assert check.total_balance_minor == 0, check
    assert list(check.negative_accounts) == [], check
    assert list(check.unbalanced_transactions) == [], check
    assert list(check.drifted_accounts) == [], check
    assert check.ok is True, check


# -- the model's records ------------------------------------------------------------------------


@dataclasses.dataclass
class Acct:
    balance: int = 0
    pending: int = 0  # debits held

    @property
    def available(self) -> int:
        return self.balance - self.pending

    def triple(self) -> tuple[int, int, int]:
        return (self.balance, self.pending, self.available)


@dataclasses.dataclass
class Hold:
    hold_id: str
    player: str
    amount: int


@dataclasses.dataclass
class Sent:
    """A request that succeeded, kept to be replayed with the same idempotency key."""

    method: str
    request: Any
    response: Any


@pytest.fixture
async def ledger(stack: Stack) -> AsyncIterator[Any]:
    """A stub of the session's ledger service, on a channel of the test's own."""
    ch = grpcutil.channel(stack.env["INVO_LEDGER_ADDR"])
    try:
        yield ledger_pb2_grpc.LedgerServiceStub(ch)
    finally:
        await ch.close()


async def call_ledger(method: Any, request: Any) -> Any:
    return await grpcutil.call(method, request, timeout_s=TIMEOUT_S)
