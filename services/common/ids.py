"""Identifiers: a type prefix and a ULID (time-ordered, 80 random bits), e.g. `evt_01JD3...`."""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid() -> str:
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    return f"{prefix}_{ulid()}"


def floor(prefix: str, at_ms: int) -> str:
    """The smallest id `new_id(prefix)` can make at `at_ms` (Unix milliseconds) or later: ids are
    time-ordered text, so `id >= floor(...)` is an index range over everything made since."""
    value = at_ms << 80
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"
