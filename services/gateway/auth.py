"""SDK-key authentication through the tenants service, with a short, bounded in-process cache.

The cache is keyed by a SHA-256 of the key, never the key itself. Revoking a key or changing a
tenant through this gateway drops that tenant's entries at once; other gateway replicas see the
change within `INVO_AUTH_CACHE_TTL_S`.
"""

from __future__ import annotations

import collections
import hashlib
import time

from invo.v1 import tenants_pb2

from services.gateway.backends import Backends


class KeyCache:
    def __init__(self, backends: Backends, *, ttl_s: float, size_max: int) -> None:
        self.backends = backends
        self.ttl_s = ttl_s
        self.size_max = size_max
        self._entries: collections.OrderedDict[bytes, tuple[float, tenants_pb2.AuthenticateKeyResponse]] = (
            collections.OrderedDict()
        )

    async def resolve(self, sdk_key: str) -> tenants_pb2.AuthenticateKeyResponse:
        """The key's tenant; raises `Unauthenticated` for an unknown, expired or revoked key."""
        digest = hashlib.sha256(sdk_key.encode()).digest()
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            self._entries.move_to_end(digest)
            return hit[1]
        resp: tenants_pb2.AuthenticateKeyResponse = await self.backends.call(
            self.backends.tenants.AuthenticateKey, tenants_pb2.AuthenticateKeyRequest(sdk_key=sdk_key)
        )
        # Never cache past the key's own expiry (a rotated key must stop on time).
        ttl_s = self.ttl_s
        if resp.HasField("key_expires_at"):
            ttl_s = min(ttl_s, resp.key_expires_at.seconds + resp.key_expires_at.nanos / 1e9 - time.time())
        self._entries[digest] = (now + ttl_s, resp)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size_max:
            self._entries.popitem(last=False)
        return resp

    def forget_tenant(self, tenant_id: str) -> None:
        for digest in [d for d, (_, r) in self._entries.items() if r.tenant.tenant_id == tenant_id]:
            del self._entries[digest]
