"""Tenant rendering and the declared tenant settings, shared by `GET /api/tenant` and the admin API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from google.protobuf import timestamp_pb2
from invo.v1 import tenants_pb2
from pydantic import Field

from services.common import limits, money
from services.gateway import fields
from services.gateway.fields import CapUsd, Request, TenantId

CAP_PERIODS = ("hourly", "daily", "monthly")
Name = Annotated[str, fields.printable(limits.TENANT_NAME_LEN_MAX)]
CurrencyName = Annotated[str, fields.printable(limits.CURRENCY_NAME_LEN_MAX)]
NetworkFee = Annotated[int, fields.percentage(limits.NETWORK_FEE_BPS_MAX)]
TransferFee = Annotated[int, fields.percentage(limits.TRANSFER_FEE_BPS_MAX)]
WebhookUrl = Annotated[str, Field(max_length=limits.WEBHOOK_URL_LEN_MAX, json_schema_extra={"pattern": "^https://"})]


class SpendingCapsIn(Request):
    """Per-player USD caps; null puts one back to the environment's default, an absent one stays."""

    hourly_usd: CapUsd | None = None
    daily_usd: CapUsd | None = None
    monthly_usd: CapUsd | None = None


class TenantSettings(Request):
    name: Name | None = None
    currency_name: CurrencyName | None = None
    webhook_url: WebhookUrl | None = Field(
        default=None, description="Where events are POSTed (null clears it); https (http for a sandbox tenant too)."
    )
    network_fee_percentage: NetworkFee | None = None
    transfer_fee_percentage: TransferFee | None = None
    allows_outgoing_transfers: bool | None = None
    allows_incoming_transfers: bool | None = None
    universal_transfers: Literal["yes", "no"] | None = None
    linked_game_ids: Annotated[list[TenantId], Field(max_length=limits.LINKED_GAME_IDS_MAX)] | None = None
    spending_caps: SpendingCapsIn | None = None
    rate_limit_per_second: Annotated[int, Field(ge=1, le=limits.RATE_LIMIT_PER_SECOND_MAX)] | None = Field(
        default=None, description="Requests per second for this tenant; null means the network's default."
    )
    auto_refund_fraud_warnings: bool | None = Field(
        default=None,
        description="Refund an actionable early fraud warning at once, before it can become a dispute (default false).",
    )


class CreateTenant(TenantSettings):
    name: Name
    currency_name: CurrencyName
    environment: Literal["sandbox", "production"] = "sandbox"


class UpdateTenant(TenantSettings):
    status: Literal["active", "suspended"] | None = None


def iso(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_of(msg: Any, field: str) -> str | None:
    """A message's optional Timestamp field as `iso` writes it, or None when it is unset."""
    return iso(getattr(msg, field)) if msg.HasField(field) else None


def percentage(bps: int) -> str:
    return money.format_scaled(bps, places=2, trim=True)


def tenant_json(t: tenants_pb2.Tenant, *, default_rate_limit: int) -> dict[str, Any]:
    """The tenant's configuration as a partner sees it: never a key or a secret."""
    caps: Any = t.spending_caps
    return {
        "tenant_id": t.tenant_id,
        "name": t.name,
        "currency_name": t.currency_name,
        "environment": t.environment,
        "status": t.status,
        "webhook_url": t.webhook_url or None,
        "network_fee_percentage": percentage(t.network_fee_bps),
        "transfer_fee_percentage": percentage(t.transfer_fee_bps),
        "allows_outgoing_transfers": t.allows_outgoing_transfers,
        "allows_incoming_transfers": t.allows_incoming_transfers,
        "universal_transfers": "yes" if t.universal_transfers else "no",
        "linked_game_ids": list(t.linked_game_ids),
        "spending_caps": {
            f"{p}_usd": (
                money.format_scaled(getattr(caps, f"{p}_usd_cents"), places=2)
                if caps.HasField(f"{p}_usd_cents")
                else None
            )
            for p in CAP_PERIODS
        },
        "rate_limit_per_second": t.rate_limit_per_second or default_rate_limit,
        "auto_refund_fraud_warnings": t.auto_refund_fraud_warnings,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
    }


def settings_message(body: TenantSettings) -> tenants_pb2.TenantSettings:
    """The settings a body sets; a field it leaves out stays as it is."""
    given = body.model_fields_set
    s = tenants_pb2.TenantSettings()
    for field in (
        "name",
        "currency_name",
        "allows_outgoing_transfers",
        "allows_incoming_transfers",
        "auto_refund_fraud_warnings",
    ):
        value = getattr(body, field)
        if value is not None:
            setattr(s, field, value)
    if "webhook_url" in given:
        s.webhook_url = body.webhook_url or ""
    if body.network_fee_percentage is not None:
        s.network_fee_bps = body.network_fee_percentage
    if body.transfer_fee_percentage is not None:
        s.transfer_fee_bps = body.transfer_fee_percentage
    if body.universal_transfers is not None:
        s.universal_transfers = body.universal_transfers == "yes"
    if body.linked_game_ids is not None:
        s.linked_game_ids.values.extend(body.linked_game_ids)
    caps = body.spending_caps
    if caps is not None:
        for p in CAP_PERIODS:
            key = f"{p}_usd"
            if key in caps.model_fields_set:
                cents = getattr(caps, key)
                setattr(s, f"{p}_cap_usd_cents", -1 if cents is None else cents)  # -1: back to the default
    if "rate_limit_per_second" in given:
        s.rate_limit_per_second = body.rate_limit_per_second or 0
    if isinstance(body, UpdateTenant) and body.status is not None:
        s.status = body.status
    return s


def key_json(k: tenants_pb2.SdkKey) -> dict[str, Any]:
    return {
        "key_id": k.key_id,
        "tenant_id": k.tenant_id,
        "prefix": k.prefix,
        "environment": k.environment,
        "created_at": iso(k.created_at),
        "expires_at": iso(k.expires_at) if k.HasField("expires_at") else None,
        "revoked_at": iso(k.revoked_at) if k.HasField("revoked_at") else None,
    }


def issued_key_json(k: tenants_pb2.IssuedKey) -> dict[str, Any]:
    return {**key_json(k.key), "sdk_key": k.sdk_key}
