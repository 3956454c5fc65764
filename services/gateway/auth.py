"""SDK-key authentication through the tenants service, with a short, bounded in-process cache.

The cache is keyed by a SHA-256 of the key, never the key itself. Revoking a key or changing a
tenant through this gateway drops that tenant's entries at once; other gateway replicas see the
change within `INVO_AUTH_CACHE_TTL_S`.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from invo.v1 import tenants_pb2

from services.gateway.backends import Backends

V = TypeVar("V")


class SecretCache(Generic[V]):
    """What a secret (an SDK key, an operator's credential) resolved to, for a short while: keyed
    by a SHA-256 of the secret, never the secret itself, bounded in size (least recently used
    goes first) and in age."""

    def __init__(self, *, ttl_s: float, size_max: int) -> None:
        self.ttl_s = ttl_s
        self.size_max = size_max
        self._entries: collections.OrderedDict[bytes, tuple[float, V]] = collections.OrderedDict()

    @staticmethod
    def _digest(secret: str) -> bytes:
        return hashlib.sha256(secret.encode()).digest()

    def get(self, secret: str) -> V | None:
        digest = self._digest(secret)
        hit = self._entries.get(digest)
        if hit is None or hit[0] <= time.monotonic():
            return None
        self._entries.move_to_end(digest)
        return hit[1]

    def put(self, secret: str, value: V, *, ttl_s: float | None = None) -> None:
        """Remember `value` for `ttl_s` (at most the cache's own TTL)."""
        digest = self._digest(secret)
        life_s = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        self._entries[digest] = (time.monotonic() + life_s, value)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size_max:
            self._entries.popitem(last=False)

    def forget(self, matches: Callable[[V], bool]) -> None:
        for digest in [d for d, (_, v) in self._entries.items() if matches(v)]:
            del self._entries[digest]


class KeyCache:
    def __init__(self, backends: Backends, *, ttl_s: float, size_max: int) -> None:
        self.backends = backends
        self.cache: SecretCache[tenants_pb2.AuthenticateKeyResponse] = SecretCache(ttl_s=ttl_s, size_max=size_max)

    async def resolve(self, sdk_key: str) -> tenants_pb2.AuthenticateKeyResponse:
        """The key's tenant; raises `Unauthenticated` for an unknown, expired or revoked key."""
        hit = self.cache.get(sdk_key)
        if hit is not None:
            return hit
        resp: tenants_pb2.AuthenticateKeyResponse = await self.backends.call(
            self.backends.tenants.AuthenticateKey, tenants_pb2.AuthenticateKeyRequest(sdk_key=sdk_key)
        )
        # Never cache past the key's own expiry (a rotated key must stop on time).
        ttl_s = None
        if resp.HasField("key_expires_at"):
            ttl_s = resp.key_expires_at.seconds + resp.key_expires_at.nanos / 1e9 - time.time()
        self.cache.put(sdk_key, resp, ttl_s=ttl_s)
        return resp

    def forget_tenant(self, tenant_id: str) -> None:
        self.cache.forget(lambda r: r.tenant.tenant_id == tenant_id)
