"""The declarations of the payments routes: the currency purchase (the seed's "Direct API"),
3-D Secure confirmation, order details (`payments_api.py`) and the processor's events in
(`processor_webhooks.py`).

payments_api.py adopts the first three (they validate its requests and document them); the
processor's route is documented here, its body being checked by the surface's signature
middleware, not by a model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from services.common import limits
from services.gateway import answers, declare, fields
from services.gateway.answers import Time, UnitsOut
from services.gateway.fields import Codes, Email, Metadata, Query, Request
from services.gateway.orders_schema import DisputeOut, FraudWarningOut, RefundOut

# The purchase range of the default settings (INVO_PURCHASE_MIN_USD_CENTS .. _MAX_): 0.50 to 1000.00.
USD_SCHEMA = {
    "type": "string",
    "pattern": r"^(0\.[5-9][0-9]?|[1-9][0-9]{0,2}(\.[0-9]{1,2})?|1000(\.0{1,2})?)$",
    "examples": ["10.00"],
    "description": "USD as a decimal string, within the purchase range (0.50 to 1000.00 by default).",
}
Reference = Annotated[
    str,
    Codes(missing="MISSING_PURCHASE_REFERENCE", invalid="INVALID_PURCHASE_REFERENCE"),
    Field(
        min_length=1,
        max_length=limits.PURCHASE_REFERENCE_LEN_MAX,
        json_schema_extra={"pattern": fields.NO_NUL},
        description="Unique per tenant: one per purchase attempt, resent on every retry"
        " (client_request_id is accepted as its old name).",
    ),
]


class PurchaseCurrency(Request):
    player_email: Email
    usd_amount: Annotated[int, fields.usd(USD_SCHEMA)]
    payment_method_id: Annotated[
        str, Field(min_length=3, max_length=limits.PAYMENT_METHOD_ID_LEN_MAX, pattern=r"^[A-Za-z0-9_]+$")
    ] = Field(examples=["pm_card_visa"])
    purchase_reference: Reference
    metadata: Metadata | None = None

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data: Any) -> Any:
        """client_request_id, the old name of purchase_reference, is still accepted (undocumented,
        so that no new integration sends it)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in ("purchase_reference", "client_request_id"):
            if data.get(name) == "":
                del data[name]  # an empty reference is an omitted one (MISSING_PURCHASE_REFERENCE)
        if "client_request_id" not in data:
            return data
        alias = data.pop("client_request_id")
        ref = data.setdefault("purchase_reference", alias)
        if ref is not None and alias is not None and ref != alias:
            raise fields.refuse(
                "INVALID_PARAMETER",
                "purchase_reference and client_request_id differ; send one.",
                param="purchase_reference",
            )
        return data


class Purchased(answers.Answer):
    """Purchase complete (or, with duplicate: true, the replay of a completed purchase_reference)."""

    status: Literal["success"]
    transaction_id: str
    order_id: str
    player_email: str
    identity_id: str
    usd_amount: str
    currency_amount: UnitsOut
    currency_name: str
    new_balance: UnitsOut | None
    duplicate: bool
    # A wallet in debt (a refund or a lost dispute took back currency already spent) is repaid
    # first: debt_repaid of currency_amount went to the debt, currency_credited to the player.
    debt_repaid: UnitsOut
    currency_credited: UnitsOut


class RequiresAction(answers.Answer):
    """3-D Secure needed: run the challenge with client_secret, then confirm-payment."""

    status: Literal["requires_action"]
    client_secret: str
    payment_intent_id: str
    order_id: str
    new_balance: None
    duplicate: bool


class Pending(answers.Answer):
    """A purchase with this purchase_reference is in flight: retry shortly with the same reference."""

    status: Literal["pending"]
    duplicate: Literal[True]
    order_id: str
    purchase_reference: str
    message: str


class ConfirmPayment(Request):
    payment_intent_id: Annotated[str, fields.text(limits.PAYMENT_METHOD_ID_LEN_MAX)]
    order_id: Annotated[str, fields.text(limits.ID_LEN_MAX)]


class Confirmed(answers.Answer):
    """Credited (already_processed: true on a repeat, or when the processor's webhook came first)."""

    status: Literal["success"]
    transaction_id: str
    order_id: str
    new_balance: UnitsOut | None
    already_processed: bool


class OrderQuery(Query):
    order_id: Annotated[str, Field(min_length=1, max_length=limits.ID_LEN_MAX)]


class Transition(answers.Answer):
    from_: str | None = Field(alias="from")
    to: str
    source: str
    reason: str
    at: Time


OrderStatus = Literal[
    "pending_payment", "requires_action", "completed", "failed", "cancelled", "refunded", "disputed_lost"
]


class OrderDetails(answers.Answer):
    """The order, its timestamps and the append-only history of its transitions."""

    order_id: str
    status: Literal[
        "pending_payment", "requires_action", "completed", "failed", "cancelled", "refunded", "disputed_lost"
    ]
    purchase_reference: str
    player_email: str
    identity_id: str
    usd_amount: str
    currency_amount: UnitsOut
    currency_name: str
    payment_intent_id: str | None
    transaction_id: str | None
    failure_code: str | None
    failure_message: str | None
    decline_code: str | None
    metadata: dict[str, object]
    created_at: Time
    updated_at: Time
    completed_at: Time | None
    history: list[Transition]
    # After the sale: what went back (refunds applied so far) and what remains refundable.
    charge_id: str | None
    usd_refunded: str
    usd_refundable: str
    currency_debited: UnitsOut
    debt_repaid: UnitsOut
    refunds: list[RefundOut]
    disputes: list[DisputeOut]
    fraud_warnings: list[FraudWarningOut]


class ProcessorAck(answers.Answer):
    """Stored (or a duplicate of one already stored); ignored: no handler for its type yet, kept."""

    received: Literal[True]
    duplicate: bool
    ignored: bool


PURCHASE_CURRENCY = declare.register(
    declare.Declaration(
        method="POST",
        path="/api/currency-purchases/purchase-currency",
        summary="Charge a tokenised card and credit the player's branded currency (1 USD = 10 units).",
        security=declare.SDK_KEY,
        body=PurchaseCurrency,
        answers={
            200: declare.Answer(
                description="success (or its replay, duplicate: true) or requires_action (3-D Secure).",
                models=(Purchased, RequiresAction),
            ),
            409: Pending,
        },
        errors=(402, 409),
    )
)
CONFIRM_PAYMENT = declare.register(
    declare.Declaration(
        method="POST",
        path="/api/currency-purchases/confirm-payment",
        summary="After 3-D Secure: credit the purchase (idempotent).",
        security=declare.SDK_KEY,
        body=ConfirmPayment,
        answers={
            200: declare.Answer(description="Credited, or still requires_action.", models=(Confirmed, RequiresAction)),
            409: Pending,
        },
        errors=(402, 404, 409),
    )
)
ORDER_DETAILS = declare.register(
    declare.Declaration(
        method="GET",
        path="/api/currency-purchases/order-details",
        summary="An order's state, amounts, timestamps and history.",
        security=declare.SDK_KEY,
        query=OrderQuery,
        answers={200: OrderDetails},
        errors=(404,),
    )
)
PROCESSOR_EVENTS = declare.register(
    declare.Declaration(
        method="POST",
        path="/webhooks/processor",
        summary="The card processor's events (Stripe-Signature verified), stored and applied once.",
        security=declare.SIGNED,
        answers={200: ProcessorAck},
        # 400: a bad signature or event; 413: over 512 KB; 503: not configured, or a backend down.
        errors=(400, 413, 503),
        description="Called by the processor, not by partners: every request must carry a valid Stripe-Signature.",
    )
)
