"""Credentials (SDK keys, operators' bearer credentials) resolved through the tenants service, with
short, bounded in-process caches of what each resolved to and of which were refused.

The caches are keyed by a SHA-256 of the credential, never the credential itself. Revoking a key
or changing a tenant through this gateway drops that tenant's entries at once; other gateway
replicas see the change within `INVO_AUTH_CACHE_TTL_S`. A refused credential is remembered for
`limits.AUTH_MISS_TTL_S`, so that a flood of one bad key costs one lookup, and one lookup at a time
runs per credential however many requests wait on it. Failed authentications are limited per
client address (`ratelimit.AuthFailures`): past the limit, a credential this gateway does not
already know is 429 before any lookup.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from aiohttp import web
from invo.v1 import tenants_pb2

from services.common import errors, limits
from services.gateway.backends import Backends
from services.gateway.ratelimit import AuthFailures

V = TypeVar("V")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class SecretCache(Generic[V]):
    """What a secret (an SDK key, an operator's credential) resolved to, for a short while: keyed
    by a SHA-256 of the secret, never the secret itself, bounded in size (least recently used
    goes first) and in age."""

    def __init__(self, *, ttl_s: float, size_max: int) -> None:
        self.ttl_s = ttl_s
        self.size_max = size_max
        self._entries: collections.OrderedDict[bytes, tuple[float, V]] = collections.OrderedDict()

    def get(self, secret: str) -> V | None:
        digest = _digest(secret)
        hit = self._entries.get(digest)
        if hit is None or hit[0] <= time.monotonic():
            return None
        self._entries.move_to_end(digest)
        return hit[1]

    def put(self, secret: str, value: V, *, ttl_s: float | None = None) -> None:
        """Remember `value` for `ttl_s` (at most the cache's own TTL)."""
        digest = _digest(secret)
        life_s = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        self._entries[digest] = (time.monotonic() + life_s, value)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size_max:
            self._entries.popitem(last=False)

    def forget(self, matches: Callable[[V], bool]) -> None:
        for digest in [d for d, (_, v) in self._entries.items() if matches(v)]:
            del self._entries[digest]

    def clear(self) -> None:
        self._entries.clear()


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why a credential was refused; each replay raises a new error (an exception raised again and
    again would grow its traceback)."""

    message: str
    error_code: str

    def error(self) -> errors.Unauthenticated:
        return errors.Unauthenticated(self.message, error_code=self.error_code)


Fetch = Callable[[], Awaitable[tuple[V, float | None]]]  # the value, and how long it may be cached


class Credentials(Generic[V]):
    """Resolved credentials (hits), refused ones (misses), and one lookup in flight per credential."""

    def __init__(self, *, ttl_s: float, size_max: int, miss_ttl_s: float = limits.AUTH_MISS_TTL_S) -> None:
        self.hits: SecretCache[V] = SecretCache(ttl_s=ttl_s, size_max=size_max)
        self.misses: SecretCache[Refusal] = SecretCache(ttl_s=min(miss_ttl_s, ttl_s), size_max=size_max)
        # Bounded by the requests in flight: an entry lives as long as its one lookup.
        self._in_flight: dict[bytes, asyncio.Future[V]] = {}

    def pending(self, secret: str) -> bool:
        """Is a lookup of this credential in flight (one a new request would wait on)?"""
        return _digest(secret) in self._in_flight

    def refused(self, secret: str) -> errors.Unauthenticated | None:
        refusal = self.misses.get(secret)
        return refusal.error() if refusal is not None else None

    async def lookup(self, secret: str, fetch: Fetch[V]) -> V:
        """`fetch` once for every request that waits on this credential now, remembering the
        answer: a value for its TTL, a refusal for the miss TTL. A waiter that is cancelled (its
        client went away) does not cancel the lookup the others wait on."""
        digest = _digest(secret)
        task = self._in_flight.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._fetch(secret, fetch))
            self._in_flight[digest] = task
            task.add_done_callback(functools.partial(self._done, digest))
        return await asyncio.shield(task)

    async def _fetch(self, secret: str, fetch: Fetch[V]) -> V:
        try:
            value, ttl_s = await fetch()
        except errors.Unauthenticated as exc:
            self.misses.put(secret, Refusal(exc.message, exc.error_code))
            raise
        self.hits.put(secret, value, ttl_s=ttl_s)
        return value

    def _done(self, digest: bytes, task: asyncio.Future[V]) -> None:
        self._in_flight.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone

    def forget_misses(self) -> None:
        """A credential was issued here: no refusal may stand in its way, however unlikely."""
        self.misses.clear()


def throttle(guard: AuthFailures, address: str | None) -> None:
    wait_s = guard.retry_after_s(address)
    if wait_s:
        raise errors.RateLimited(
            f"Too many failed authentications from this address; retry after {wait_s} second(s).",
            retry_after_s=wait_s,
        )


async def check(creds: Credentials[V], secret: str, fetch: Fetch[V], *, guard: AuthFailures, address: str | None) -> V:
    """What `secret` resolves to: a known one at once; a refused one refused again (no lookup);
    otherwise, unless the address is over its failure limit, a lookup, whose refusal counts."""
    hit = creds.hits.get(secret)
    if hit is not None:
        return hit
    refusal = creds.refused(secret)
    if refusal is not None:
        raise refusal
    if creds.pending(secret):
        return await creds.lookup(secret, fetch)  # waits on the lookup in flight: costs nothing more
    throttle(guard, address)
    # The lookup this request starts is counted as a failure before it runs, and given back when
    # it succeeds: counted after, any number of lookups started together from one address would
    # all pass the throttle. (No await between `pending` and the lookup's start: no race.)
    guard.failed(address)
    try:
        value = await creds.lookup(secret, fetch)
    except errors.Unauthenticated:
        raise
    except BaseException:
        guard.refund(address)  # no verdict (the tenants service away): not a failed authentication
        raise
    guard.refund(address)
    return value


def one_header(request: web.Request, name: str) -> str:
    """A credential header's value ("" if absent). Sent twice, it is refused: which one would count
    is anyone's guess."""
    values = request.headers.getall(name, [])
    if len(values) > 1:
        raise errors.InvalidRequest(
            f"The {name} header is sent more than once; send it once.",
            error_code="INVALID_REQUEST",
            extra={"param": name},
        )
    return values[0].strip() if values else ""


def well_formed(secret: str, *, len_max: int) -> bool:
    """Printable ASCII of a bounded length: what every credential we issue is. Anything else (bytes
    that were not UTF-8 arrive as surrogates) is refused without a lookup, and never hashed."""
    return 0 < len(secret) <= len_max and secret.isascii() and secret.isprintable()


class KeyCache:
    def __init__(self, backends: Backends, *, ttl_s: float, size_max: int) -> None:
        self.backends = backends
        self.credentials: Credentials[tenants_pb2.AuthenticateKeyResponse] = Credentials(ttl_s=ttl_s, size_max=size_max)

    async def resolve(
        self, sdk_key: str, *, guard: AuthFailures, address: str | None
    ) -> tenants_pb2.AuthenticateKeyResponse:
        """The key's tenant; raises `Unauthenticated` for an unknown, expired or revoked key."""
        if not limits.SDK_KEY_RE.fullmatch(sdk_key):
            raise errors.Unauthenticated("Invalid API key provided.", error_code="INVALID_API_KEY")
        return await check(
            self.credentials, sdk_key, functools.partial(self._fetch, sdk_key), guard=guard, address=address
        )

    async def _fetch(self, sdk_key: str) -> tuple[tenants_pb2.AuthenticateKeyResponse, float | None]:
        resp: tenants_pb2.AuthenticateKeyResponse = await self.backends.call(
            self.backends.tenants.AuthenticateKey, tenants_pb2.AuthenticateKeyRequest(sdk_key=sdk_key)
        )
        # Never cache past the key's own expiry (a rotated key must stop on time).
        ttl_s = None
        if resp.HasField("key_expires_at"):
            ttl_s = resp.key_expires_at.seconds + resp.key_expires_at.nanos / 1e9 - time.time()
        return resp, ttl_s

    def forget_tenant(self, tenant_id: str) -> None:
        self.credentials.hits.forget(lambda r: r.tenant.tenant_id == tenant_id)

    def forget_misses(self) -> None:
        self.credentials.forget_misses()
