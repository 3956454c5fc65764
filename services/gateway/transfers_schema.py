"""The declarations of the transfer routes (`transfers_api.py`): request bodies and answers.

The seed names the calls (initiate-transfer, initiate-send, verify-sms, claim-transfer,
claim-currency) but not their bodies; these are ours, in the shape of the rest of the API: a
player by `player_email`, amounts as decimal strings of units, a required `idempotency_key` on
every call that creates something, the object itself as the answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo

from services.common import limits, money
from services.gateway import answers, fields
from services.gateway.answers import Time, UnitsOut
from services.gateway.fields import Codes, Email, IdempotencyKey, Metadata, Query, Request, TenantRef

TRANSFER_ID_PATTERN = r"^trf_[0-9A-Z]{26}$"
TransferId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=limits.ID_LEN_MAX,
        pattern=TRANSFER_ID_PATTERN,
        examples=["trf_01JD3Q8X4Z6N2R5T7V9W1Y3A5C"],
    ),
]
STATUSES = ("pending_verification", "claimable", "claiming", "completed", "returning", "cancelled", "expired")
Status = Literal["pending_verification", "claimable", "claiming", "completed", "returning", "cancelled", "expired"]

AMOUNT_SCHEMA = {
    "type": "string",
    "pattern": r"^([1-9][0-9]{0,8}(\.[0-9]0?)?|0\.[1-9]0?)$",
    "examples": ["100", "12.5"],
    "description": "Currency units the recipient receives, a decimal string: a multiple of 0.1 unit (so that the"
    " 10% fee is a whole 0.01 unit), at most 999999999.9. The sender pays 10% on top.",
}


def _amount(value: Any, info: ValidationInfo) -> int:
    if value is None:
        raise fields.refuse("MISSING_PARAMETER", "amount is required.")
    try:
        minor = money.parse_scaled(value, places=2, field="amount")
    except money.AmountError as exc:
        raise fields.refuse("INVALID_AMOUNT", str(exc) + ".") from exc
    if minor <= 0:
        raise fields.refuse("INVALID_AMOUNT", "amount must be greater than zero.")
    if minor % 10:
        raise fields.refuse(
            "INVALID_AMOUNT", "amount must be a multiple of 0.1 unit, so that its 10% fee is a whole 0.01 unit."
        )
    if minor > limits.TRANSFER_AMOUNT_MINOR_MAX:
        raise fields.refuse(
            "INVALID_AMOUNT", f"amount must be at most {money.format_units(limits.TRANSFER_AMOUNT_MINOR_MAX)}."
        )
    return minor


Amount = Annotated[int, fields.Checked(_amount, AMOUNT_SCHEMA)]
Phone = Annotated[
    str,
    Codes(invalid="INVALID_PHONE_NUMBER"),
    Field(
        min_length=1,
        max_length=limits.PHONE_LEN_MAX,
        json_schema_extra={"pattern": r"^\+[1-9][0-9]{7,14}$"},
        examples=["+14155550123"],
        description="A mobile number in E.164 (+ and the country code); spaces, dots, hyphens and brackets are"
        " forgiven. Only the countries INVO texts are accepted (PHONE_COUNTRY_NOT_ALLOWED).",
    ),
]
Pin = Annotated[
    str,
    Field(
        min_length=6,
        max_length=6,
        pattern=r"^[0-9]{6}$",
        examples=["042917"],
        description="The 6 digits texted to the sender.",
    ),
]
ClaimCode = Annotated[
    str,
    Codes(invalid="INVALID_CLAIM_CODE", missing="MISSING_PARAMETER"),
    Field(
        min_length=1,
        max_length=limits.CLAIM_CODE_LEN_MAX,
        json_schema_extra={"pattern": r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$"},
        examples=["7K2M-9XQP-R4TD-H8WN"],
        description="The code texted to the recipient (or answered by verify-sms for a self-transfer). Case,"
        " spaces and hyphens are forgiven, and I, L, O are read as 1, 1, 0.",
    ),
]


class InitiateTransfer(Request):
    """A self-transfer: the same person moves currency from your tenant to another where they also play."""

    player_email: Email = Field(description="The sender, a player of your tenant.")
    destination_tenant_id: TenantRef = Field(description="From POST /api/transfers/available-destinations.")
    amount: Amount
    sender_phone: Phone = Field(description="The sender's mobile number: the PIN and then the claim code go there.")
    idempotency_key: IdempotencyKey
    metadata: Metadata | None = None


class InitiateSend(Request):
    """A send: a gift to a phone number; the recipient claims it in any tenant they use."""

    player_email: Email = Field(description="The sender, a player of your tenant.")
    recipient_phone: Phone = Field(description="The recipient's mobile number: the claim code goes there only.")
    sender_phone: Phone = Field(description="The sender's mobile number: the PIN goes there.")
    amount: Amount
    idempotency_key: IdempotencyKey
    metadata: Metadata | None = None


class VerifySms(Request):
    transfer_id: TransferId
    pin: Pin


class ResendSms(Request):
    transfer_id: TransferId


class Claim(Request):
    claim_code: ClaimCode
    player_email: Email = Field(description="Your player who receives the currency (created if new).")


class TransferQuery(Query):
    limit: Annotated[int, fields.query_int(1, limits.TRANSFERS_LIMIT_MAX)] = Field(
        default=20, description=f"At most this many (1 to {limits.TRANSFERS_LIMIT_MAX})."
    )
    starting_after: TransferId | None = Field(default=None, description="The next page: the last transfer_id seen.")
    status: Status | None = None
    role: Literal["source", "destination"] | None = Field(
        default=None, description="Only those your tenant sent (source) or received (destination)."
    )


class DevSmsQuery(Query):
    phone: Annotated[str, Field(max_length=limits.PHONE_LEN_MAX, pattern=r"^\+[1-9][0-9]{7,14}$")] | None = None
    limit: Annotated[int, fields.query_int(1, limits.DEV_SMS_LIMIT_MAX)] = 20


# -- answers ------------------------------------------------------------------------------------


class FeeBreakdown(answers.Answer):
    """The 10% the sender pays on top, split: read these, never recompute them."""

    source_tenant: UnitsOut = Field(examples=["3.5"])
    destination_tenant: UnitsOut = Field(examples=["3.5"])
    network: UnitsOut = Field(examples=["3"])
    total: UnitsOut = Field(examples=["10"])


class TransitionOut(answers.Answer):
    from_: str | None = Field(alias="from")
    to: str
    source: str
    reason: str
    at: Time


class TransferOut(answers.Answer):
    """A transfer as your tenant sees it: its own side (the source sees the sender, the destination the
    recipient); phone numbers masked."""

    transfer_id: str
    type: Literal["self_transfer", "send"]
    status: Status
    role: Literal["source", "destination"]
    source_tenant_id: str
    destination_tenant_id: str | None
    sender_email: str | None
    recipient_email: str | None
    sender_phone: str | None
    recipient_phone: str | None
    amount: UnitsOut
    fee_breakdown: FeeBreakdown
    total_debited: UnitsOut
    new_balance: UnitsOut | None
    pin_attempts_remaining: int | None
    pin_sends_remaining: int | None
    pin_expires_at: Time | None
    verification_expires_at: Time | None
    claim_expires_at: Time | None
    end_reason: str | None
    hold_transaction_id: str | None
    transaction_id: str | None
    metadata: dict[str, Any] | None
    created_at: Time
    updated_at: Time
    verified_at: Time | None
    completed_at: Time | None
    ended_at: Time | None


class TransferAnswer(TransferOut):
    duplicate: bool


class Verified(TransferOut):
    """Claimable now. A self-transfer's claim_code is answered this once (and texted to the sender);
    a send's goes only to the recipient's phone, so it is null here."""

    claim_code: str | None


class TransferDetail(TransferOut):
    history: list[TransitionOut]


class TransferList(answers.Answer):
    data: list[TransferOut]
    has_more: bool


class DevSmsOut(answers.Answer):
    to: str
    body: str
    created_at: Time


class DevSmsList(answers.Answer):
    data: list[DevSmsOut]
