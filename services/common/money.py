"""Strict decimal parsing and formatting. Amounts are integers inside; strings at the edge.

A malformed value, a negative one, or more decimals than the scale allows is an error, never a
rounding. JSON numbers arrive as `int` or `Decimal` (the gateway parses floats as Decimal).
"""

from __future__ import annotations

import re
from decimal import Decimal

# ASCII digits only, nothing around them: `\d`, int() and Decimal() also read other scripts' digits
# ("1\u0660\u0660" is 100 to them) and strip spaces, and a money API reads an amount one way or refuses it.
_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,17})(?:\.([0-9]+))?")


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
        # Bounded before it is written out: 1e999999999 in "f" format is a billion digits.
        if value.adjusted() > 17:
            raise AmountError(f"{field} is too large")
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -places:
            raise AmountError(f"{field} allows at most {places} decimal places")
        text = format(value, "f")
    elif isinstance(value, str):
        text = value
    else:
        raise AmountError(f"{field} must be a decimal string")
    m = _DECIMAL.fullmatch(text)
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

# The one rounding rule of every fee split (README, "Fees and rounding"): a fee is computed first
# and rounded DOWN to the minor unit, so nobody is charged more than the rate; a tenant's share
# of a fee is rounded down too, and the network's share is what is left. The parts always add up
# to the whole exactly.
TRANSFER_FEE_BPS = 1000  # the sender pays 10% on top of the amount (the seed)
TRANSFER_DESTINATION_BPS = 350  # the destination tenant's kickback, always 3.5%


def fee_of(amount: int, *, bps: int) -> int:
    """`bps` basis points of `amount`, rounded down."""
    if amount < 0 or not 0 <= bps <= BPS_WHOLE:
        raise ValueError("amount must be >= 0 and bps within 0..10000")
    return amount * bps // BPS_WHOLE


def split_item_purchase(total: int, *, network_fee_bps: int) -> tuple[int, int]:
    """(partner_amount, network_fee) of an item purchase, in minor units: the network's fee is
    rounded down, the partner keeps the rest (a 0.35 item at 10% gives the partner 0.32)."""
    fee = fee_of(total, bps=network_fee_bps)
    return total - fee, fee


def split_transfer_fee(amount: int, *, source_bps: int) -> tuple[int, int, int, int]:
    """(fee, source_share, destination_share, network_share) of a transfer of `amount`.

    The sender pays `fee` (10% of the amount) on top. The source tenant's share is its
    `transfer_fee_percentage` (at most the 6.5% that 10% less the destination's 3.5% leaves), the
    destination's is 3.5%, and a source share above 3.5% comes out of the network's 3%.
    """
    if not 0 <= source_bps <= TRANSFER_FEE_BPS - TRANSFER_DESTINATION_BPS:
        raise ValueError("source_bps must be within 0..650")
    fee = fee_of(amount, bps=TRANSFER_FEE_BPS)
    source = fee_of(amount, bps=source_bps)
    destination = fee_of(amount, bps=TRANSFER_DESTINATION_BPS)
    return fee, source, destination, fee - source - destination


def format_units(minor: int) -> str:
    """Currency amounts as the seeds show them: "100", "0.35", "-12.50" (minor = 1/100 unit)."""
    if minor % 100 == 0:
        return str(minor // 100)
    return format_scaled(minor, places=2)


def format_usd(cents: int) -> str:
    return format_scaled(cents, places=2)


MINOR_PER_CENT = 10  # 1 USD = 10 units = 1000 minor units


def pro_rata(total: int, *, part: int, whole: int) -> int:
    """`total * part / whole`, rounded down: the share of `total` that `part` of `whole` is.

    Apply it to running totals, never to each piece: the debit of the k-th partial refund is
    pro_rata(currency, refunded after) - pro_rata(currency, refunded before), so the pieces of a
    whole add up exactly to `total` whatever the rounding of each."""
    if whole <= 0 or not 0 <= part <= whole or total < 0:
        raise ValueError("pro_rata needs 0 <= part <= whole, whole > 0 and total >= 0")
    return total * part // whole
