"""The checkout session token: a JWT (HS256 through pyjwt) whose `kid` names the key that signed it,
so the key can rotate: `INVO_CHECKOUT_KEYS` is `kid:secret[,kid:secret...]`, the first one signs and
every one verifies (an old key stays listed until the tokens it signed have expired, 15 minutes).

It carries the session (`jti`), the tenant, the player, the amount, the two URLs and a hash of the
metadata, and nothing secret: the page reads the same from the session the payments service stored,
and a token that disagrees with its session is refused as tampered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from typing import Any

import jwt

from services.common import errors

ISSUER = "invo"
ALGORITHM = "HS256"
TOKEN_LEN_MAX = 4096
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
SECRET_LEN_MIN = 32


class InvalidSession(errors.Unauthenticated):
    default_error = "invalid_session"
    default_error_code = "INVALID_SESSION"


def invalid(message: str = "This checkout link is not valid.") -> InvalidSession:
    return InvalidSession(message)


@dataclasses.dataclass(frozen=True)
class Claims:
    session_id: str
    tenant_id: str
    player_email: str
    usd_cents: int
    success_url: str
    cancel_url: str
    metadata_hash: str
    kid: str
    expires_at_s: int


def metadata_hash(metadata_json: str) -> str:
    return hashlib.sha256(metadata_json.encode()).hexdigest()


class CheckoutKeys:
    def __init__(self, spec: str) -> None:
        self.keys: dict[str, bytes] = {}
        self.signing_kid = ""
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            kid, sep, secret = part.partition(":")
            if not sep or not KID_RE.match(kid) or len(secret) < SECRET_LEN_MIN:
                raise ValueError(
                    f"INVO_CHECKOUT_KEYS must be kid:secret pairs, each secret at least {SECRET_LEN_MIN} characters"
                )
            if kid in self.keys:
                raise ValueError(f"INVO_CHECKOUT_KEYS names key {kid} twice")
            self.keys[kid] = secret.encode()
            self.signing_kid = self.signing_kid or kid
        if not self.keys:
            raise ValueError("INVO_CHECKOUT_KEYS is empty")

    def sign(self, claims: Claims, *, issued_at_s: int) -> str:
        payload = {
            "iss": ISSUER,
            "jti": claims.session_id,
            "tid": claims.tenant_id,
            "sub": claims.player_email,
            "usd": claims.usd_cents,
            "surl": claims.success_url,
            "curl": claims.cancel_url,
            "mh": claims.metadata_hash,
            "iat": issued_at_s,
            "exp": claims.expires_at_s,
        }
        return jwt.encode(payload, self.keys[claims.kid], algorithm=ALGORITHM, headers={"kid": claims.kid})

    def verify(self, token: str) -> Claims:
        """The token's claims if one of our keys signed it (expiry is the session's to judge, so
        that an expired link says "expired", not "invalid")."""
        if not token or len(token) > TOKEN_LEN_MAX or not token.isascii():
            raise invalid()
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise invalid() from None
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise invalid()
        try:
            raw: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["jti", "exp", "iat", "iss"], "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise invalid() from None
        try:
            return Claims(
                session_id=str(raw["jti"]),
                tenant_id=str(raw["tid"]),
                player_email=str(raw["sub"]),
                usd_cents=int(raw["usd"]),
                success_url=str(raw["surl"]),
                cancel_url=str(raw["curl"]),
                metadata_hash=str(raw["mh"]),
                kid=str(kid),
                expires_at_s=int(raw["exp"]),
            )
        except (KeyError, TypeError, ValueError):
            raise invalid() from None


def same(a: Claims, b: Claims) -> bool:
    """The token's claims are the stored session's (compared in constant time, field by field)."""
    ok = True
    for field in dataclasses.fields(Claims):
        ok &= hmac.compare_digest(str(getattr(a, field.name)).encode(), str(getattr(b, field.name)).encode())
    return ok
