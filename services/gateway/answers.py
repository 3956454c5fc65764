"""The answers several routes share, declared once: the OpenAPI document shows them and
schemathesis checks every answer against them (`extra="forbid"`: a field the handler adds and the
declaration lacks is a failing test, not a silent drift)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

UnitsOut = str  # "100", "0.35", "-12.50": currency units as a decimal string
Time = str  # "2026-01-31T12:00:00Z"


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpendingCaps(Answer):
    hourly_usd: str | None
    daily_usd: str | None
    monthly_usd: str | None


class Tenant(Answer):
    """A tenant's configuration (never a key or a secret)."""

    tenant_id: str
    name: str
    currency_name: str
    environment: Literal["sandbox", "production"]
    status: Literal["active", "suspended"]
    webhook_url: str | None
    network_fee_percentage: str = Field(examples=["10"])
    transfer_fee_percentage: str = Field(examples=["3.5"])
    allows_outgoing_transfers: bool
    allows_incoming_transfers: bool
    universal_transfers: Literal["yes", "no"]
    linked_game_ids: list[str]
    spending_caps: SpendingCaps
    rate_limit_per_second: int
    auto_refund_fraud_warnings: bool
    created_at: Time
    updated_at: Time


class Key(Answer):
    """An SDK key as listed: its prefix only."""

    key_id: str
    tenant_id: str
    prefix: str
    environment: Literal["sandbox", "production"]
    created_at: Time
    expires_at: Time | None
    revoked_at: Time | None


class IssuedKey(Key):
    """A new SDK key: shown this once, never again."""

    sdk_key: str


class BalanceLine(Answer):
    player_email: str
    balance: UnitsOut
    available_balance: UnitsOut
    pending: UnitsOut


class Balance(BalanceLine):
    """The balance; an unknown player reads as zero."""

    currency_name: str


class Delivery(Answer):
    """One webhook delivery (with `attempt_log` where it is shown one by one)."""

    delivery_id: str
    event_id: str
    event_type: str
    tenant_id: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: Time | None
    created_at: Time
    delivered_at: Time | None
    attempt_log: list[Attempt] | None = None


class Attempt(Answer):
    attempt: int
    at: Time
    status_code: int | None
    latency_ms: int
    response_body: str
    error: str | None


class DeliveryPage(Answer):
    """Deliveries, newest first."""

    data: list[Delivery]
    has_more: bool
    next_cursor: str | None


class Redelivered(Answer):
    """How many deliveries were queued again."""

    redelivered: int


class RotatedSecret(Answer):
    """The new signing secret (shown once); the old one keeps signing until previous_expires_at."""

    webhook_signing_secret: str
    previous_expires_at: Time | None


Delivery.model_rebuild()
