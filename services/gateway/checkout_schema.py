"""The declarations of hosted checkout: minting and reading a session with the SDK key
(`checkout_api.py`), and the page with its API, opened by the session token (`checkout_page.py`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.common import limits
from services.gateway import answers, declare, fields
from services.gateway.answers import Time, UnitsOut
from services.gateway.fields import Email, Metadata, Request
from services.gateway.payments_schema import USD_SCHEMA

URL_LEN_MAX = 2048
TOKEN_LEN_MAX = 4096
Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=URL_LEN_MAX,
        json_schema_extra={"format": "uri", "pattern": r"^https?://[^\s]+$"},
        examples=["https://yourgame.com/store/success"],
        description="An absolute https URL (http only for a loopback host in development).",
    ),
]


class CreateSession(Request):
    player_email: Email
    usd_amount: Annotated[int, fields.usd(USD_SCHEMA)]
    success_url: Url
    cancel_url: Url
    metadata: Metadata | None = None


class SessionCreated(answers.Answer):
    """The session: open checkout_url in an iframe or WebView; single use, 15 minutes."""

    session_id: str
    checkout_url: str
    expires_at: Time
    expires_in_seconds: int


SessionStatus = Literal["open", "completed", "expired", "cancelled"]


class SessionState(answers.Answer):
    """The session's state, for partners whose WebView cannot receive postMessage."""

    session_id: str
    status: SessionStatus
    player_email: str
    usd_amount: str
    metadata: dict[str, object]
    order_id: str | None
    transaction_id: str | None
    created_at: Time
    expires_at: Time
    completed_at: Time | None


class SavedCard(answers.Answer):
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class CurrentOrder(answers.Answer):
    order_id: str
    status: str
    client_secret: str | None = None
    failure_message: str | None = None
    transaction_id: str | None = None
    currency_received: UnitsOut | None = None
    new_balance: UnitsOut | None = None


class PageSession(answers.Answer):
    """What the page shows (also embedded in the page when it loads)."""

    session_id: str
    status: SessionStatus
    usd_amount: str
    currency_amount: UnitsOut
    currency_name: str
    expires_at: Time
    success_url: str
    cancel_url: str
    saved_cards: list[SavedCard]
    order: CurrentOrder | None


class Pay(Request):
    payment_method_id: Annotated[
        str, Field(min_length=3, max_length=limits.PAYMENT_METHOD_ID_LEN_MAX, pattern=r"^[A-Za-z0-9_]+$")
    ] = Field(examples=["pm_card_visa"])
    save_card: bool = False


class Paid(answers.Answer):
    status: Literal["success"]
    order_id: str
    transaction_id: str
    currency_received: UnitsOut
    new_balance: UnitsOut | None


class PayRequiresAction(answers.Answer):
    status: Literal["requires_action"]
    order_id: str
    client_secret: str


class PayPending(answers.Answer):
    status: Literal["pending"]
    order_id: str


class Cancelled(answers.Answer):
    status: Literal["cancelled"]
    cancel_url: str


class CardRemoved(answers.Answer):
    removed: Literal[True]
    saved_cards: list[SavedCard]


class PageQuery(fields.Query):
    session: Annotated[str, Field(min_length=1, max_length=TOKEN_LEN_MAX)] = Field(
        description="The session token from checkout_url."
    )


PAY_ANSWER = declare.Answer(
    description="Paid, 3-D Secure needed (run the challenge, then confirm), or still in flight (poll the session).",
    models=(Paid, PayRequiresAction, PayPending),
)
PAGE_ERRORS = (400, 402, 404, 409, 410, 429)

CREATE_SESSION = declare.register(
    declare.Declaration(
        method="POST",
        path="/api/checkout/sessions",
        summary="Mint a hosted checkout session: a signed, single-use checkout_url valid for 15 minutes.",
        security=declare.SDK_KEY,
        body=CreateSession,
        answers={201: SessionCreated},
        errors=(429,),
    )
)
GET_SESSION = declare.register(
    declare.Declaration(
        method="GET",
        path="/api/checkout/sessions/{session_id}",
        summary="A checkout session's state: open, completed (with order_id and transaction_id), expired, cancelled.",
        security=declare.SDK_KEY,
        answers={200: SessionState},
        errors=(404,),
    )
)
PAGE = declare.register(
    declare.Declaration(
        method="GET",
        path="/checkout/",
        summary="The hosted checkout page (HTML) for a session token; a clear page for a used, expired or bad one.",
        security=None,
        query=PageQuery,
        answers={
            200: declare.Answer(description="The page.", schema={"type": "string"}, media_type="text/html"),
        },
        errors=(401, 403, 409, 410, 429, 503),
        html_errors=True,
        description="Opened by the player's browser from checkout_url. Asked for JSON (Accept: application/json), "
        "a refusal is the error envelope instead of a page.",
    )
)
PAGE_SESSION = declare.register(
    declare.Declaration(
        method="GET",
        path="/checkout/api/session",
        summary="The page's view of its session: amount, saved cards, the current attempt.",
        security=declare.CHECKOUT,
        answers={200: PageSession},
        errors=PAGE_ERRORS,
    )
)
PAGE_PAY = declare.register(
    declare.Declaration(
        method="POST",
        path="/checkout/api/pay",
        summary="Pay the session with a card just entered (a PaymentMethod id) or a saved one.",
        security=declare.CHECKOUT,
        body=Pay,
        answers={200: PAY_ANSWER},
        errors=PAGE_ERRORS,
    )
)
PAGE_CONFIRM = declare.register(
    declare.Declaration(
        method="POST",
        path="/checkout/api/confirm",
        summary="After the 3-D Secure challenge: credit the session's payment (confirm-payment's path).",
        security=declare.CHECKOUT,
        body=fields.Empty,
        body_required=False,
        answers={200: PAY_ANSWER},
        errors=PAGE_ERRORS,
    )
)
PAGE_CANCEL = declare.register(
    declare.Declaration(
        method="POST",
        path="/checkout/api/cancel",
        summary="The player cancels: the session is closed, a 3-D Secure challenge under way is cancelled.",
        security=declare.CHECKOUT,
        body=fields.Empty,
        body_required=False,
        answers={200: Cancelled},
        errors=PAGE_ERRORS,
    )
)
PAGE_REMOVE_CARD = declare.register(
    declare.Declaration(
        method="DELETE",
        path="/checkout/api/cards/{card_id}",
        summary="Remove one of the player's saved cards.",
        security=declare.CHECKOUT,
        answers={200: CardRemoved},
        errors=PAGE_ERRORS,
    )
)
STATIC_FILE = declare.register(
    declare.Declaration(
        method="GET",
        path="/checkout/static/{name}",
        summary="The checkout page's own script, style and images.",
        security=None,
        answers={200: declare.Answer(description="The file.", schema={"type": "string"}, media_type="text/plain")},
        errors=(404,),
    )
)
