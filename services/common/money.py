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
