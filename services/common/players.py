"""Player identity as every service sees it: a normalised email per tenant."""

from __future__ import annotations

import re

from services.common import errors

# Deliberately plain: one @, no spaces or control characters, a dot in the domain.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$")
EMAIL_LEN_MAX = 254


def normalize_email(email: str, *, field: str = "player_email") -> str:
    """Emails are case-insensitive here: one wallet per person per tenant, however they type it."""
    email = email.strip().lower()
    if len(email) > EMAIL_LEN_MAX or not _EMAIL.match(email):
        raise errors.InvalidRequest(
            f"{field} must be a valid email address.", error_code="INVALID_PLAYER_EMAIL", extra={"param": field}
        )
    return email
