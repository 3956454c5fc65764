"""The declarations of what happens after a sale: an operator's refund of an order, the order as an
operator reads it (`orders_api.py`), and the refunds, disputes and fraud warnings that the
partner's order-details shows too (`payments_api.py`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.gateway import answers, fields
from services.gateway.answers import Time, UnitsOut
from services.gateway.fields import IdempotencyKey, Request

# A refund's USD: 0.01 to 1000.00 (the largest purchase), never more than the order has left.
REFUND_USD_SCHEMA = {
    "type": "string",
    "pattern": r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,2}(\.[0-9]{1,2})?|1000(\.0{1,2})?)$",
    "examples": ["2.50"],
    "description": "USD as a decimal string; left out: everything the order has left to refund.",
}
REFUND_CENTS_MAX = 100_000


class RefundBody(Request):
    usd_amount: Annotated[int, fields.usd(REFUND_USD_SCHEMA, cents_max=REFUND_CENTS_MAX)] | None = None
    reason: Literal["requested_by_customer", "duplicate", "fraudulent"] = Field(
        default="requested_by_customer", description="Passed to the processor as the refund's reason."
    )
    # Required: the processor is called once per key (it is the processor's idempotency key too).
    idempotency_key: IdempotencyKey


RefundStatus = Literal["pending", "succeeded", "failed"]


class RefundOut(answers.Answer):
    refund_id: str
    status: RefundStatus
    usd_amount: str
    currency_debited: UnitsOut
    reason: str
    source: Literal["admin", "processor", "fraud_warning"]
    processor_refund_id: str | None
    transaction_id: str | None
    new_balance: UnitsOut | None
    failure_message: str | None
    created_at: Time
    applied_at: Time | None


class AdminRefundOut(RefundOut):
    operator_id: str | None


class DisputeOut(answers.Answer):
    dispute_id: str
    status: str
    outcome: Literal["won", "lost", "warning_closed"] | None
    reason: str
    usd_amount: str
    inquiry: bool
    currency_frozen: UnitsOut
    currency_debited: UnitsOut
    created_at: Time
    closed_at: Time | None


class FraudWarningOut(answers.Answer):
    warning_id: str
    fraud_type: str
    actionable: bool
    recommendation: Literal["consider_refund", "monitor"]
    refund_id: str | None
    created_at: Time
