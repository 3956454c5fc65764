"""The numbers a transfer is held to (from the settings), the fee split, and the refusals every
step shares."""

from __future__ import annotations

import dataclasses

import asyncpg

from services.common import errors, limits, money
from services.common.config import Settings


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rules:
    countries: frozenset[str]  # ISO regions whose numbers may be texted
    pin_ttl_s: float
    pin_attempts_max: int
    pin_sends_max: int
    pin_resend_cooldown_s: float
    verify_window_s: float
    claim_ttl_self_s: float
    claim_ttl_send_s: float
    claim_failures_per_minute: int

    @classmethod
    def from_settings(cls, s: Settings) -> Rules:
        return cls(
            countries=frozenset(c.strip().upper() for c in s.transfer_sms_countries.split(",") if c.strip()),
            pin_ttl_s=s.transfer_pin_ttl_s,
            pin_attempts_max=max(1, s.transfer_pin_attempts_max),
            pin_sends_max=max(1, s.transfer_pin_sends_max),
            pin_resend_cooldown_s=s.transfer_pin_resend_cooldown_s,
            verify_window_s=s.transfer_verify_window_s,
            claim_ttl_self_s=s.transfer_claim_ttl_s,
            claim_ttl_send_s=s.send_claim_ttl_s,
            claim_failures_per_minute=s.claim_failures_per_tenant_per_minute,
        )


@dataclasses.dataclass(frozen=True)
class Split:
    fee: int
    source: int
    destination: int
    network: int


def split(amount_minor: int, *, source_bps: int) -> Split:
    """The sender pays exactly 10% of the amount on top: an amount whose 10% is not a whole minor
    unit (not a multiple of 0.1 unit) is refused rather than rounded, so nobody ever pays less or
    more than 10%. The shares are rounded down, the network takes the rest (money.py)."""
    if amount_minor <= 0 or amount_minor % 10 != 0:
        raise errors.InvalidRequest(
            "amount must be a multiple of 0.1 unit, so that its 10% fee is a whole minor unit (0.01 unit).",
            error_code="INVALID_AMOUNT",
            extra={"param": "amount"},
        )
    if amount_minor > limits.TRANSFER_AMOUNT_MINOR_MAX:
        raise errors.InvalidRequest(
            f"amount must be at most {money.format_units(limits.TRANSFER_AMOUNT_MINOR_MAX)}.",
            error_code="INVALID_AMOUNT",
            extra={"param": "amount"},
        )
    fee, source, destination, network = money.split_transfer_fee(
        amount_minor, source_bps=min(source_bps, limits.TRANSFER_FEE_BPS_MAX)
    )
    return Split(fee, source, destination, network)


# -- refusals ------------------------------------------------------------------------------------


def ended(row: asyncpg.Record) -> errors.InvoError:
    """Why nothing more can be done to a transfer past its PIN step."""
    status = row["status"]
    extra = {"transfer_id": row["transfer_id"], "transfer_status": status}
    if status in ("claiming", "completed"):
        return errors.Conflict(
            "This transfer has already been claimed.", error_code="TRANSFER_ALREADY_CLAIMED", extra=extra
        )
    if status == "expired" or (status == "returning" and row["return_status"] == "expired"):
        return errors.Gone(
            "This transfer expired; the funds went back to the sender.", error_code="TRANSFER_EXPIRED", extra=extra
        )
    if status in ("cancelled", "returning"):
        return errors.Conflict(
            "This transfer was cancelled; the funds went back to the sender.",
            error_code="TRANSFER_CANCELLED",
            extra=extra,
        )
    return errors.Conflict(
        f"This transfer is {status.replace('_', ' ')}.", error_code="TRANSFER_NOT_AWAITING_PIN", extra=extra
    )


def policy_refused(message: str, code: str) -> errors.Forbidden:
    return errors.Forbidden(message, error="transfer_not_allowed", error_code=code)
