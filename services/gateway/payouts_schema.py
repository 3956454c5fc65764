"""The declarations of the payout routes (`payouts_api.py`): the seed's "What you send" (amount,
contact email, ACH bank details on each request, an idempotency key), the answers (never more of an
account number than its last four digits) and the operators' review."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.common import limits
from services.gateway import answers, fields
from services.gateway.answers import Time
from services.gateway.fields import Codes, ContactEmail, IdempotencyKey, Query, Request, TenantRef

PAYOUT_ID_PATTERN = r"^po_[0-9A-Z]{26}$"
PayoutId = Annotated[str, Field(pattern=PAYOUT_ID_PATTERN, examples=["po_01JD3Q8X4Z6N2R5T7V9W1Y3A5C"])]
Status = Literal["requested", "approved", "processing", "completed", "returned", "rejected", "cancelled", "failed"]
PAYOUT_USD_SCHEMA = {
    "type": "string",
    "pattern": r"^([1-9][0-9]{0,8}(\.[0-9]{1,2})?)$",
    "examples": ["1250.00"],
    "description": "USD as a decimal string: at least INVO_PAYOUT_MIN_USD_CENTS (1.00 by default), at most what your"
    " tenant is owed and not already holding for other payouts (GET /api/revenue: available_usd).",
}


class PayoutBody(Request):
    """A payout of your owed revenue to a US bank account by ACH."""

    usd_amount: Annotated[int, fields.usd(PAYOUT_USD_SCHEMA, cents_max=limits.PAYOUT_USD_CENTS_MAX)]
    contact_email: ContactEmail
    account_holder_name: Annotated[str, fields.printable(limits.ACCOUNT_HOLDER_LEN_MAX)] = Field(
        examples=["Star Dramas Inc."]
    )
    routing_number: Annotated[
        str,
        Codes(invalid="INVALID_ROUTING_NUMBER"),
        Field(min_length=9, max_length=9, pattern=r"^[0-9]{9}$", examples=["021000021"]),
    ] = Field(description="A 9-digit ABA routing number (its checksum is checked).")
    account_number: Annotated[
        str,
        Codes(invalid="INVALID_ACCOUNT_NUMBER"),
        Field(min_length=4, max_length=17, pattern=r"^[0-9]{4,17}$", examples=["123456789"]),
    ] = Field(description="4 to 17 digits. Stored encrypted; only its last four digits are ever shown.")
    account_type: Literal["checking", "savings"]
    idempotency_key: IdempotencyKey


class AdminPayoutBody(PayoutBody):
    """A payout asked for by an operator on a tenant's behalf: another operator must approve it."""

    tenant_id: TenantRef


class RejectBody(Request):
    reason: Annotated[str, fields.printable(limits.REVIEW_REASON_LEN_MAX)] = Field(
        examples=["The bank account is not the one on the agreement."]
    )


class PayoutQuery(Query):
    status: Status | None = None
    limit: Annotated[int, fields.query_int(1, limits.PAYOUTS_LIMIT_MAX)] = Field(
        default=20, description=f"At most this many (1 to {limits.PAYOUTS_LIMIT_MAX})."
    )
    starting_after: PayoutId | None = Field(default=None, description="The next page: the last payout_id seen.")


class AdminPayoutQuery(PayoutQuery):
    tenant_id: Annotated[str, Field(pattern=limits.TENANT_ID_PATTERN)] | None = None


# -- answers ------------------------------------------------------------------------------------


class BankAccountOut(answers.Answer):
    account_holder_name: str
    routing_number: str
    account_type: Literal["checking", "savings"]
    account_last4: str = Field(examples=["6789"])


class TransitionOut(answers.Answer):
    from_: str | None = Field(alias="from")
    to: str
    source: str = Field(description="partner, operator:<id>, provider or sweep")
    reason: str
    at: Time


class PayoutOut(answers.Answer):
    """A payout: its state, amount, bank account (last four digits only) and history."""

    payout_id: str
    status: Status
    usd_amount: str
    contact_email: str
    bank_account: BankAccountOut
    approvals_required: int
    approvals_received: int
    reason: str | None
    return_code: str | None
    return_reason: str | None
    created_at: Time
    updated_at: Time
    approved_at: Time | None
    completed_at: Time | None
    ended_at: Time | None


class PayoutDetail(PayoutOut):
    history: list[TransitionOut]


class PayoutAnswer(PayoutDetail):
    duplicate: bool


class ApprovalOut(answers.Answer):
    operator_id: str
    at: Time


class AdminPayout(PayoutDetail):
    """The payout as an operator sees it: its tenant, who asked, who approved, the provider's order."""

    tenant_id: str
    requested_by: str
    approvals: list[ApprovalOut]
    provider_payment_order_id: str | None


class AdminPayoutAnswer(AdminPayout):
    duplicate: bool


class PayoutList(answers.Answer):
    data: list[PayoutOut]
    has_more: bool


class AdminPayoutSummary(PayoutOut):
    tenant_id: str
    requested_by: str
    approvals: list[ApprovalOut]
    provider_payment_order_id: str | None


class AdminPayoutList(answers.Answer):
    data: list[AdminPayoutSummary]
    has_more: bool


class AchAck(answers.Answer):
    received: bool
    duplicate: bool
    ignored: bool
