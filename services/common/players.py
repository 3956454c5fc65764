"""Player identity as every service sees it: a normalised email per tenant.

One rule, applied everywhere an email names a wallet: strip surrounding spaces, Unicode NFC, then
lower case (`str.lower`, which depends on no locale), then NFC again (lowering can leave a
sequence NFC would compose). "José" typed with a composed é, with e and a combining accent, or in
capitals is one address and one wallet. Lower case rather than case folding: folding also makes
"ß" into "ss" and so merges addresses that mail servers keep apart, and lower case keeps every
wallet created before this rule where it was (an ASCII or composed address lowers as it always did).
"""

from __future__ import annotations

import re
import unicodedata

from services.common import errors

# Deliberately plain: one @, no spaces or control characters, a dot in the domain. Surrogates
# (text that is not Unicode) are refused too: no wallet can be named by what cannot be stored.
_PART = r"[^@\s\x00-\x1f\ud800-\udfff]"
_EMAIL = re.compile(rf"^{_PART}{{1,64}}@{_PART}+\.{_PART}+$")
EMAIL_LEN_MAX = 254


def normalize_email(email: str, *, field: str = "player_email") -> str:
    """Emails are case-insensitive and form-insensitive here: one wallet per person per tenant,
    however they type it (the rule is the module's docstring)."""
    email = unicodedata.normalize("NFC", unicodedata.normalize("NFC", email.strip()).lower())
    if len(email) > EMAIL_LEN_MAX or not _EMAIL.match(email):
        raise errors.InvalidRequest(
            f"{field} must be a valid email address.", error_code="INVALID_PLAYER_EMAIL", extra={"param": field}
        )
    return email
