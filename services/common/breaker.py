"""A circuit breaker in front of an outside provider (the card processor today; SMS and ACH next).

It counts consecutive failures of the provider (outages: 5xx, timeouts, connection errors; never a
business answer such as a card decline). At `failures_max` it opens: calls are refused at once for
`cooldown_s` with the caller's own `error` class (the payments one is 503 PROCESSOR_UNAVAILABLE),
then one probe call is let through; its success closes the breaker, its failure opens it again.

State is per process: each replica learns of an outage by itself, which costs at most
`failures_max` calls each, and needs no shared store that could itself be down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from services.common import errors, metrics

log = logging.getLogger("invo.breaker")


class CircuitBreaker:
    def __init__(
        self,
        *,
        name: str,
        failures_max: int,
        cooldown_s: float,
        error: type[errors.InvoError] = errors.Unavailable,
        message: str = "The provider is unavailable; retry shortly.",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures_max < 1:
            raise ValueError("failures_max must be at least 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")
        self.name = name
        self.failures_max = failures_max
        self.cooldown_s = cooldown_s
        self.error = error
        self.message = message
        self.clock = clock
        self.failures = 0
        self.open_until: float | None = None
        self.probing = False
        # Read at each scrape: exact whatever the clock did since the last transition.
        metrics.BREAKER_OPEN.labels(name).set_function(lambda: 1.0 if self.state == "open" else 0.0)

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "half_open" if self.clock() >= self.open_until else "open"

    def _refusal(self) -> errors.InvoError | None:
        state = self.state
        if state == "open" or (state == "half_open" and self.probing):
            retry_s = max(1, int((self.open_until or 0) - self.clock()) + 1)
            return self.error(self.message, retry_after_s=retry_s)
        return None

    def check(self) -> None:
        """Raise if a call would be refused now, without claiming the half-open probe (a caller that
        wants to refuse before it records anything of its own)."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal

    def before_call(self) -> None:
        """Raise if the call is refused; in the half-open state, this call becomes the one probe."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        if self.state == "half_open":
            self.probing = True

    def abandon(self) -> None:
        """A call ended with neither answer (cancelled, an unexpected error): if it was the probe,
        the next call may probe instead. Without this, a cancelled probe left the breaker refusing
        every call for ever."""
        self.probing = False

    def record_success(self) -> None:
        if self.open_until is not None:
            log.info("%s circuit breaker closes", self.name)
        self.failures = 0
        self.open_until = None
        self.probing = False

    def record_failure(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.failures_max:
            if self.open_until is None or self.probing:
                log.warning("%s circuit breaker opens for %.0fs", self.name, self.cooldown_s)
            self.open_until = self.clock() + self.cooldown_s
            self.probing = False
