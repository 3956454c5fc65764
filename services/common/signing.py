"""The webhook signature partners verify: `X-Invo-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]`,
each v1 an HMAC-SHA256 of "<t>." + the raw body under one of the tenant's signing secrets (two
during a rotation). It is the scheme of Stripe's verifiers, so any of them checks it."""

from __future__ import annotations

import hashlib
import hmac


def signature_header(body: bytes, secrets: list[str], *, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"]
    parts += [f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join(parts)
