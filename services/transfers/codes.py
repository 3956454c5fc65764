"""PINs and claim codes, stored only as keyed HMACs.

A PIN has only 10^6 values, so a plain hash of a leaked table is reversed by a dictionary in
milliseconds; an HMAC under a server key stops that offline attack. The context (the transfer id)
is hashed in so a digest copied onto another transfer never matches.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Crockford's confusables: what a person may type for what the code shows.
_CONFUSABLES = {"I": "1", "L": "1", "O": "0"}
CLAIM_SYMBOLS = 16  # 16 x 5 bits = 80 bits of entropy
MAX_TYPED_CHARS = 64
MIN_KEY_BYTES = 32


def new_pin() -> str:
    """Six uniform digits from `secrets`, leading zeros kept."""
    return f"{secrets.randbelow(10**6):06d}"


def new_claim_code() -> str:
    """80 random bits as Crockford base32 in groups of four: `XXXX-XXXX-XXXX-XXXX`."""
    symbols = "".join(secrets.choice(CROCKFORD) for _ in range(CLAIM_SYMBOLS))
    return "-".join(symbols[i : i + 4] for i in range(0, CLAIM_SYMBOLS, 4))


def parse_claim_code(typed: str) -> str | None:
    """Canonical form of a typed claim code, or None. Case, spaces, hyphens and I/L/O are forgiven."""
    if len(typed) > MAX_TYPED_CHARS:
        return None
    out = []
    for ch in typed.upper():
        if ch in " -":
            continue
        ch = _CONFUSABLES.get(ch, ch)
        if ch not in CROCKFORD:
            return None
        out.append(ch)
    if len(out) != CLAIM_SYMBOLS:
        return None
    s = "".join(out)
    return "-".join(s[i : i + 4] for i in range(0, CLAIM_SYMBOLS, 4))


class CodeHasher:
    """HMAC-SHA256 of codes under a server key (at least 32 bytes)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"code hashing key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def digest(self, kind: str, value: str, *, context: str) -> bytes:
        # Length-prefixed fields so ("a", "bc") and ("ab", "c") never collide.
        msg = b"".join(len(p).to_bytes(4, "big") + p for p in (s.encode() for s in (kind, context, value)))
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def matches(self, stored: bytes, kind: str, value: str, *, context: str) -> bool:
        return hmac.compare_digest(stored, self.digest(kind, value, context=context))
