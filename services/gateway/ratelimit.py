"""Per-tenant token buckets, in process. Bounded: idle buckets are dropped."""

from __future__ import annotations

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
