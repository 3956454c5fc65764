"""Tenant rendering and settings parsing, shared by `GET /api/tenant` and the admin API."""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2
from invo.v1 import tenants_pb2

from services.common import errors, money
from services.gateway.http import get_bool, get_int, get_scaled, get_str, invalid, reject_unknown

CAP_PERIODS = ("hourly", "daily", "monthly")
SETTINGS_FIELDS = {
    "name",
    "currency_name",
    "webhook_url",
    "network_fee_percentage",
    "transfer_fee_percentage",
    "allows_outgoing_transfers",
    "allows_incoming_transfers",
    "universal_transfers",
    "linked_game_ids",
    "spending_caps",
    "rate_limit_per_second",
}
CREATE_FIELDS = SETTINGS_FIELDS | {"environment"}
UPDATE_FIELDS = SETTINGS_FIELDS | {"status"}
CAP_USD_CENTS_MAX = 100_000_000_00  # $100M: a typo guard, not a business rule


def iso(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")


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
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
    }


def parse_settings(body: dict[str, Any], *, allowed: set[str]) -> tenants_pb2.TenantSettings:
    reject_unknown(body, allowed)
    s = tenants_pb2.TenantSettings()
    for field, max_len in (("name", 200), ("currency_name", 64)):
        value = get_str(body, field, max_len=max_len)
        if value is not None:
            setattr(s, field, value)
    if "webhook_url" in body:
        url = get_str(body, "webhook_url", max_len=2048)
        s.webhook_url = url or ""
    network = get_scaled(body, "network_fee_percentage", places=2, hi=10000)
    if network is not None:
        s.network_fee_bps = network
    transfer = get_scaled(body, "transfer_fee_percentage", places=2, hi=10000)
    if transfer is not None:
        s.transfer_fee_bps = transfer
    for flag in ("allows_outgoing_transfers", "allows_incoming_transfers"):
        allowed_flag = get_bool(body, flag)
        if allowed_flag is not None:
            setattr(s, flag, allowed_flag)
    universal = body.get("universal_transfers")
    if universal is not None:
        if universal not in ("yes", "no"):
            raise invalid("universal_transfers", "universal_transfers must be 'yes' or 'no'.")
        s.universal_transfers = universal == "yes"
    if "linked_game_ids" in body:
        linked = body["linked_game_ids"]
        if not isinstance(linked, list) or not all(isinstance(x, str) for x in linked):
            raise invalid("linked_game_ids", "linked_game_ids must be a list of tenant ids.")
        if len(linked) > 1000:
            raise invalid("linked_game_ids", "linked_game_ids holds at most 1000 tenant ids.")
        s.linked_game_ids.values.extend(linked)
    if "spending_caps" in body:
        caps = body["spending_caps"]
        if not isinstance(caps, dict):
            raise invalid("spending_caps", "spending_caps must be an object.")
        reject_unknown(caps, {f"{p}_usd" for p in CAP_PERIODS})
        for p in CAP_PERIODS:
            key = f"{p}_usd"
            if key not in caps:
                continue
            if caps[key] is None:
                setattr(s, f"{p}_cap_usd_cents", -1)  # back to the environment default
                continue
            cents = get_scaled(caps, key, places=2, hi=CAP_USD_CENTS_MAX)
            setattr(s, f"{p}_cap_usd_cents", cents)
    if "rate_limit_per_second" in body:
        rate = body["rate_limit_per_second"]
        s.rate_limit_per_second = 0 if rate is None else (get_int(body, "rate_limit_per_second", lo=1, hi=100000) or 0)
    if "status" in allowed:
        status = get_str(body, "status", max_len=20)
        if status is not None:
            if status not in ("active", "suspended"):
                raise invalid("status", "status must be 'active' or 'suspended'.")
            s.status = status
    return s


def parse_create(body: dict[str, Any]) -> tenants_pb2.CreateTenantRequest:
    settings = parse_settings(body, allowed=CREATE_FIELDS)
    environment = get_str(body, "environment", max_len=20) or "sandbox"
    if environment not in ("sandbox", "production"):
        raise invalid("environment", "environment must be 'sandbox' or 'production'.")
    for required in ("name", "currency_name"):
        if not settings.HasField(required):
            raise errors.InvalidRequest(
                f"{required} is required.", error_code="MISSING_PARAMETER", extra={"param": required}
            )
    return tenants_pb2.CreateTenantRequest(environment=environment, settings=settings)


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
