"""Phone numbers for PIN and claim SMS: parsed and normalised to E.164 with `phonenumbers`.

Google's libphonenumber metadata knows each country's lengths and prefixes; hand-written rules
would drift. Cheap checks (length, control characters, letters) run before the parser so junk
never reaches it.
"""

from __future__ import annotations

import phonenumbers

from services.common.errors import InvalidRequest

INVALID_PHONE_NUMBER = "INVALID_PHONE_NUMBER"
COUNTRY_NOT_ALLOWED = "PHONE_COUNTRY_NOT_ALLOWED"

MAX_RAW_CHARS = 32


def _invalid(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param} is not a valid phone number: write it in E.164, + and the country code (+14155550123).",
        error_code=INVALID_PHONE_NUMBER,
        extra={"param": param},
    )


def normalize(
    raw: str,
    *,
    allowed_countries: frozenset[str],
    default_region: str | None = None,
    param: str = "phone",
) -> str:
    """Answer `raw` as E.164 (`+14155550123`), or raise InvalidRequest."""
    if len(raw) > MAX_RAW_CHARS or any(not ch.isprintable() for ch in raw) or any(ch.isalpha() for ch in raw):
        raise _invalid(param)
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise _invalid(param) from None
    if not phonenumbers.is_valid_number(number):
        raise _invalid(param)
    region = phonenumbers.region_code_for_number(number)
    if region not in allowed_countries:
        raise InvalidRequest(
            f"{param}: INVO does not text numbers of {region or 'this country'}.",
            error_code=COUNTRY_NOT_ALLOWED,
            extra={"param": param},
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask(e164: str) -> str:
    """`+14155550123` -> `+1415•••0123`: enough to recognise, not enough to dial."""
    try:
        number = phonenumbers.parse(e164, None)
        cc = str(number.country_code)
    except phonenumbers.NumberParseException:
        return "•••"
    national = e164.lstrip("+")[len(cc) :]
    if len(national) <= 7:
        return f"+{cc}•••{national[-2:]}"
    return f"+{cc}{national[:3]}•••{national[-4:]}"
