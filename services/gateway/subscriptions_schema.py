"""The declarations of the subscription routes (`subscriptions_api.py`): a plan the player pays
from the wallet every period (issue 19), its answers, its list and its cancel."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.common import limits
from services.gateway import answers, fields
from services.gateway.answers import Time, UnitsOut
from services.gateway.fields import Email, IdempotencyKey, Metadata, Query, Request

SUBSCRIPTION_ID_PATTERN = r"^sub_[0-9A-Z]{26}$"
SubscriptionId = Annotated[str, Field(pattern=SUBSCRIPTION_ID_PATTERN, examples=["sub_01JD3Q8X4Z6N2R5T7V9W1Y3A5C"])]
Status = Literal["trialing", "active", "past_due", "cancelled"]
Interval = Literal["day", "week", "month"]
INTERVAL_COUNT_MAX = 12  # services/subscriptions/calendar.py COUNT_MAX, for every interval
TRIAL_DAYS_MAX = 730
SUBSCRIPTIONS_LIMIT_MAX = 100

REFUSALS = (
    "402 `INSUFFICIENT_BALANCE` / `PLAYER_IN_DEBT`: the first period could not be paid; nothing was created"
    " (a trial is never refused: its first charge is at the trial's end)."
)


class SubscriptionBody(Request):
    """A subscription of a player to a plan, paid from the wallet every period."""

    player_email: Email
    plan_id: Annotated[str, fields.non_blank(limits.ITEM_ID_LEN_MAX)]
    plan_name: Annotated[str, fields.non_blank(limits.ITEM_NAME_LEN_MAX)]
    price: Annotated[int, fields.units(limits.PRICE_MINOR_MAX)]
    interval: Interval
    interval_count: Annotated[int, Field(ge=1, le=INTERVAL_COUNT_MAX)] | None = Field(
        default=None, description="Intervals per period, 1 if absent (at most 12)."
    )
    trial_days: Annotated[int, Field(ge=0, le=TRIAL_DAYS_MAX)] | None = Field(
        default=None, description="Days before the first charge (0 or absent: charged at once)."
    )
    idempotency_key: IdempotencyKey
    metadata: Metadata | None = None


class CancelBody(Request):
    at_once: bool | None = Field(
        default=None,
        description="true: cancelled now. Absent or false: at the end of the current period (not renewed).",
    )
    prorate: bool | None = Field(
        default=None,
        description="With at_once: the unused part of the paid period back to the player, taken from your"
        " revenue and the network's fee as the period's charge split them (whole seconds, each part rounded down)."
        " At the period's end nothing is left unused: nothing is refunded.",
    )


class SubscriptionQuery(Query):
    player_email: Email | None = None
    status: Status | None = None
    limit: Annotated[int, fields.query_int(1, SUBSCRIPTIONS_LIMIT_MAX)] = Field(
        default=20, description=f"At most this many (1 to {SUBSCRIPTIONS_LIMIT_MAX})."
    )
    starting_after: SubscriptionId | None = Field(
        default=None, description="The next page: the last subscription_id seen."
    )


class PeriodOut(answers.Answer):
    start: Time
    end: Time


class ChargeOut(answers.Answer):
    period: int
    transaction_id: str
    total: UnitsOut
    partner_amount: UnitsOut
    network_fee: UnitsOut
    new_balance: UnitsOut
    period_start: Time
    period_end: Time
    charged_at: Time


class RefundOut(answers.Answer):
    period: int
    amount: UnitsOut
    partner_amount: UnitsOut
    network_fee: UnitsOut
    transaction_id: str


class SubscriptionOut(answers.Answer):
    subscription_id: str
    player_email: str
    plan_id: str
    plan_name: str
    price: UnitsOut
    interval: Interval
    interval_count: int
    status: Status
    current_period: PeriodOut
    trial_end: Time | None
    cancel_at_period_end: bool
    cancellation_reason: Literal["requested", "payment_failed"] | None
    cancelled_at: Time | None
    periods_paid: int
    failed_attempts: int
    next_attempt_at: Time | None = Field(description="When the next renewal or retry is made; null once cancelled.")
    last_charge: ChargeOut | None
    refund: RefundOut | None = Field(description="A prorated cancel's refund; null otherwise.")
    metadata: dict[str, object]
    created_at: Time
    updated_at: Time


class SubscriptionAnswer(SubscriptionOut):
    duplicate: bool


class SubscriptionList(answers.Answer):
    data: list[SubscriptionOut]
    has_more: bool
