"""Token buckets, in process and bounded: per tenant (its rate limit) and per client address
(failed authentications)."""

from __future__ import annotations

import collections
import ipaddress
import math
import time
from collections.abc import Callable

BUCKETS_MAX = 100_000


class TokenBucket:
    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now


class RateLimiter:
    def __init__(self, *, burst_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst_s = burst_s
        self._buckets: dict[str, TokenBucket] = {}
        self._clock = clock

    def take(self, key: str, rate_per_s: int) -> int:
        """0 if the request may go ahead, else the seconds to wait (for Retry-After)."""
        now = self._clock()
        rate = float(max(1, rate_per_s))
        capacity = max(1.0, rate * self.burst_s)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            if len(self._buckets) >= BUCKETS_MAX:
                self._evict(now)
            bucket = TokenBucket(rate, capacity, now)
            self._buckets[key] = bucket
        bucket.tokens = min(bucket.capacity, bucket.tokens + (now - bucket.updated) * bucket.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / bucket.rate))

    def _evict(self, now: float) -> None:
        # A bucket that has refilled is indistinguishable from a new one: drop those first.
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * b.rate >= b.capacity]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= BUCKETS_MAX:
            self._buckets.clear()


class AuthFailures:
    """Failed authentications per client address, as token buckets: `burst` failures, refilled at
    `rate_per_s`. An address with none left must wait before its next lookup (a key the gateway
    already knows as valid needs none, so a partner's warm keys keep working behind a shared NAT).

    Bounded: at most `addresses_max` buckets; refilled ones (the same as a new one) go first, then
    the least recently failed. IPv6 clients are counted per /64, the block one host usually holds.
    """

    def __init__(
        self,
        *,
        burst: int,
        rate_per_s: float,
        addresses_max: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = float(burst)
        self.rate_per_s = rate_per_s
        self.addresses_max = addresses_max
        self._clock = clock
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    @staticmethod
    def _key(address: str | None) -> str:
        if not address:
            return ""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address[:64]  # a unix socket path, say: bounded all the same
        if ip.version == 6:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def _tokens(self, bucket: TokenBucket, now: float) -> float:
        return min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)

    def retry_after_s(self, address: str | None) -> int:
        """0 if the address may try a credential now, else the seconds until it may."""
        bucket = self._buckets.get(self._key(address))
        if bucket is None:
            return 0
        tokens = self._tokens(bucket, self._clock())
        if tokens >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - tokens) / self.rate_per_s))

    def refund(self, address: str | None) -> None:
        """Give back what `failed` counted, for an attempt that turned out to succeed."""
        key, now = self._key(address), self._clock()
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, self._tokens(bucket, now) + 1.0)
            bucket.updated = now

    def failed(self, address: str | None) -> None:
        """Count one failed authentication against the address."""
        key, now = self._key(address), self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.addresses_max:
                self._evict(now)
            bucket = TokenBucket(self.rate_per_s, self.burst, now)
            self._buckets[key] = bucket
        bucket.tokens = max(0.0, self._tokens(bucket, now) - 1.0)
        bucket.updated = now
        self._buckets.move_to_end(key)

    def __len__(self) -> int:
        return len(self._buckets)

    def _evict(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if self._tokens(b, now) >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) >= self.addresses_max:
            self._buckets.popitem(last=False)
