"""Strict decimal parsing and formatting. Amounts are integers inside; strings at the edge.

A malformed value, a negative one, or more decimals than the scale allows is an error, never a
rounding. JSON numbers arrive as `int` or `Decimal` (the gateway parses floats as Decimal).
"""

from __future__ import annotations

import re
from decimal import Decimal

_DECIMAL = re.compile(r"^(0|[1-9]\d{0,17})(?:\.(\d+))?$")


class AmountError(ValueError):
    pass


def parse_scaled(value: object, *, places: int, field: str) -> int:
    """`"3.5"` with places=2 is 350. Accepts a decimal string, an int or a Decimal; never a float."""
    if isinstance(value, bool) or value is None:
        raise AmountError(f"{field} must be a decimal string")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise AmountError(f"{field} must be a finite number")
        text = format(value, "f")
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise AmountError(f"{field} must be a decimal string")
    m = _DECIMAL.match(text)
    if not m:
        raise AmountError(f'{field} must be a non-negative decimal like "10.00", got {value!r}')
    whole, frac = m.group(1), m.group(2) or ""
    if len(frac) > places:
        raise AmountError(f"{field} allows at most {places} decimal places")
    return int(whole) * 10**places + int(frac.ljust(places, "0") or "0")


def format_scaled(value: int, *, places: int, trim: bool = False) -> str:
    """350 with places=2 is "3.50" (or "3.5" with trim=True)."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**places)
    if places == 0:
        return f"{sign}{whole}"
    frac_s = str(frac).rjust(places, "0")
    if trim:
        frac_s = frac_s.rstrip("0")
        if not frac_s:
            return f"{sign}{whole}"
    return f"{sign}{whole}.{frac_s}"


BPS_WHOLE = 10_000


def split_item_purchase(total: int, *, network_fee_bps: int) -> tuple[int, int]:
    """(partner_amount, network_fee) of an item purchase, in minor units.

    The partner's share is rounded down and the remainder goes to the network, so the two
    always add up to the total exactly.
    """
    if total < 0 or not 0 <= network_fee_bps <= BPS_WHOLE:
        raise ValueError("total must be >= 0 and the fee within 0..10000 bps")
    partner = total * (BPS_WHOLE - network_fee_bps) // BPS_WHOLE
    return partner, total - partner


def format_units(minor: int) -> str:
    """Currency amounts as the seeds show them: "100", "0.35", "-12.50" (minor = 1/100 unit)."""
    if minor % 100 == 0:
        return str(minor // 100)
    return format_scaled(minor, places=2)


def format_usd(cents: int) -> str:
    return format_scaled(cents, places=2)


MINOR_PER_CENT = 10  # 1 USD = 10 units = 1000 minor units
