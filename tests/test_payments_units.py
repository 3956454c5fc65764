"""The payments modules below the network: the shared lifecycle and lease helpers, the ledger
call's deadline, the purchase validation, the amount check and the start-up requirements."""

from __future__ import annotations

import time
from typing import Any

import pytest
from invo.v1 import ledger_pb2, payments_pb2

from services.common import errors, grpcutil
from services.common.config import ConfigError, Settings
from services.common.leases import Lease
from services.common.transitions import Lifecycle
from services.payments import limits, service
from services.payments.ledger_client import LedgerClient
from services.payments.processor import Outcome, outcome_of
from services.payments.purchases import PurchaseRequest, validate
from services.payments.registry import Handled, Registry
from services.payments.settlement import mismatch

ROW = {
    "tenant_id": "tn_1",
    "player_email": "zoe@example.com",
    "currency_amount": 10_000,
    "usd_cents": 1000,
    "order_id": "ord_01JD3Q8X4Z6N2R5T7V9W1Y3A5C",
}


class FakeLedger:
    def __init__(self) -> None:
        self.timeouts: list[float] = []
        self.requests: list[ledger_pb2.CreditPurchaseRequest] = []

    async def CreditPurchase(self, request: Any, *, timeout: float, metadata: Any) -> ledger_pb2.TransactionResult:
        self.timeouts.append(timeout)
        self.requests.append(request)
        return ledger_pb2.TransactionResult(
            transaction_id="txn_1",
            balances=[ledger_pb2.AccountBalance(player_email="zoe@example.com", balance_minor=10_000)],
        )


class FakeContext:
    def __init__(self, remaining_s: float | None) -> None:
        self.remaining_s = remaining_s

    def time_remaining(self) -> float | None:
        return self.remaining_s


# -- the ledger call gets what is left of the caller's deadline -------------------------------


async def test_the_ledger_call_gets_what_is_left_of_the_callers_deadline() -> None:
    stub = FakeLedger()
    client = LedgerClient(stub, timeout_cap_s=5.0)
    deadline = grpcutil.deadline_of(FakeContext(0.8))
    credit = await client.credit_purchase(ROW, "pi_1", deadline=deadline)
    assert (credit.transaction_id, credit.balance_minor) == ("txn_1", 10_000)
    assert 0 < stub.timeouts[0] <= 0.8
    # A caller with a long deadline gets the setting at most; no caller (recovery) gets the setting.
    await client.credit_purchase(ROW, "pi_1", deadline=grpcutil.deadline_of(FakeContext(60.0)))
    await client.credit_purchase(ROW, "pi_1", deadline=None)
    assert stub.timeouts[1:] == [5.0, 5.0]
    # The domain call names no account: the ledger builds the postings.
    req = stub.requests[0]
    assert (req.tenant_id, req.player_email, req.amount_minor, req.order_id) == (
        "tn_1",
        "zoe@example.com",
        10_000,
        ROW["order_id"],
    )
    assert (req.idempotency.namespace, req.idempotency.key) == ("payments", f"order:{ROW['order_id']}")


async def test_a_caller_out_of_time_is_not_worth_a_ledger_call() -> None:
    stub = FakeLedger()
    client = LedgerClient(stub, timeout_cap_s=5.0)
    with pytest.raises(errors.Timeout):
        await client.credit_purchase(ROW, "pi_1", deadline=time.monotonic() - 0.01)
    assert stub.timeouts == []


def test_deadline_of_a_call_without_one_is_none() -> None:
    assert grpcutil.deadline_of(FakeContext(None)) is None
    assert grpcutil.timeout_within(None, cap_s=3.0) == 3.0


# -- the amount and currency of a succeeded PaymentIntent -------------------------------------


@pytest.mark.parametrize(
    ("pi", "matches"),
    [
        ({"amount": 1000, "amount_received": 1000, "currency": "usd"}, True),
        ({"amount": 1000, "currency": "USD"}, True),
        ({"amount": 1001, "amount_received": 1001, "currency": "usd"}, False),
        ({"amount": 1000, "amount_received": 999, "currency": "usd"}, False),
        ({"amount": 1000, "amount_received": 1000, "currency": "eur"}, False),
        ({"currency": "usd"}, False),  # an amount the processor did not state is not the order's
        ({"amount": 1000}, False),
    ],
)
def test_a_payment_intent_pays_for_an_order_only_with_its_amount_and_currency(
    pi: dict[str, Any], matches: bool
) -> None:
    outcome = outcome_of({"id": "pi_1", "status": "succeeded", **pi})
    assert (mismatch(ROW, outcome) == "") is matches


# -- purchase validation ----------------------------------------------------------------------


def request(**kw: Any) -> PurchaseRequest:
    fields: dict[str, Any] = {
        "limits": limits.Limits(tenant_id="tn_1", environment="sandbox", caps_usd_cents={}),
        "currency_name": "Gold Coins",
        "player_email": "zoe@example.com",
        "usd_cents": 1000,
        "payment_method_id": "pm_card_visa",
        "purchase_reference": "ref-1",
        "metadata_json": "",
        **kw,
    }
    return PurchaseRequest(**fields)


@pytest.mark.parametrize(
    "metadata_json",
    ['{"blob": "' + "x" * 8200 + '"}', "[1, 2]", "not json", '"text"'],
    ids=["over_8_kb", "an_array", "not_json", "a_string"],
)
def test_metadata_over_its_limit_or_not_an_object_is_invalid_parameter(metadata_json: str) -> None:
    with pytest.raises(errors.InvalidRequest) as refused:
        validate(request(metadata_json=metadata_json), Settings())
    assert refused.value.error_code == "INVALID_PARAMETER"
    assert refused.value.extra == {"param": "metadata"}


def test_metadata_at_its_limit_is_accepted() -> None:
    text = '{"blob": "' + "x" * (8192 - 12) + '"}'
    assert len(text.encode()) == 8192
    assert validate(request(metadata_json=text), Settings()) == text
    assert validate(request(metadata_json=""), Settings()) == "{}"


# -- start-up --------------------------------------------------------------------------------


async def test_payments_refuses_to_start_without_its_own_identity_key() -> None:
    """identity_id must never be derived from the SDK-key pepper (or any other secret)."""
    settings = Settings(processor_secret_key="sk_test_x", key_pepper="a-pepper-that-must-not-be-used")
    with pytest.raises(ConfigError, match="INVO_IDENTITY_KEY"):
        await service.setup(None, settings, None)  # type: ignore[arg-type]


def test_tenant_caps_cross_the_hop_as_overrides_only() -> None:
    ctx = payments_pb2.TenantContext(tenant_id="tn_1", environment="production", daily_cap_usd_cents=700)
    got = service.limits_of(ctx)
    assert got.caps_usd_cents == {"daily": 700}
    assert limits.caps(Settings(), got) == {"hourly": 20_000, "daily": 700, "monthly": 200_000}


# -- the shared seams ------------------------------------------------------------------------


def test_a_lifecycle_refuses_names_that_are_not_identifiers_and_moves_to_nowhere() -> None:
    allowed = {"open": frozenset({"closed"}), "closed": frozenset()}
    with pytest.raises(ValueError):
        Lifecycle(table="orders; DROP TABLE x", key_column="id", audit_table="t", allowed=allowed)
    with pytest.raises(ValueError, match="no entry"):
        Lifecycle(table="t", key_column="id", audit_table="a", allowed={"open": frozenset({"gone"})})
    life = Lifecycle(table="t", key_column="id", audit_table="a", allowed=allowed)
    assert life.can_move("open", "closed") and not life.can_move("closed", "open") and not life.can_move("x", "open")
    with pytest.raises(ValueError):
        Lease(table="t", key_column="id", duration_s=0)


def test_one_handler_per_event_type() -> None:
    registry = Registry()

    @registry.on("charge.refunded")
    async def refunded(event_id: str, payload: dict[str, Any], deadline: float | None) -> Handled:
        return Handled("applied")

    assert registry.get("charge.refunded") is refunded and registry.get("charge.dispute.created") is None
    assert registry.types() == {"charge.refunded"}
    with pytest.raises(ValueError):
        registry.register("charge.refunded", refunded)


def test_an_outcome_carries_what_the_processor_says_it_is_for() -> None:
    o = outcome_of({"id": "pi_1", "status": "succeeded", "amount": 1000, "amount_received": 1000, "currency": "usd"})
    assert o == Outcome(status="succeeded", payment_intent_id="pi_1", amount=1000, amount_received=1000, currency="usd")
