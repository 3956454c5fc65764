"""The simulator's events: building them, signing them, sending them, and the faults it plays.

`WebhookSender` is the base of the simulator: it holds the webhook settings, the `Faults` the test
controls set, and what was held back or sent. It wraps each change as a Stripe event (`evt_...`),
signs it Stripe's way (`Stripe-Signature: t=...,v1=...`, see `sign`) and POSTs it to the gateway,
retrying a few times, or holds, delays or duplicates it as the faults say. Every module's events go
through `_emit`, so the webhook faults apply to all of them alike.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import aiohttp

from services.processor_sim.state import Journal

API_VERSION = "2025-01-27.acacia"
WEBHOOK_TIMEOUT_S = 5.0
# Stripe retries an undelivered event for days; here about four minutes (0.2 s doubling to 30 s),
# long enough to outlast a restart of the gateway, bounded so that an event nobody takes ends.
WEBHOOK_ATTEMPTS_MAX = 15
WEBHOOK_BACKOFF_MAX_S = 30.0
SENT_KEPT_MAX = 10_000  # delivery attempts remembered for tests (/_sim/state), newest kept


def _now() -> int:
    return int(time.time())


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Stripe's scheme: v1 = hex HMAC-SHA256 of "<t>.<payload>" keyed by the endpoint secret."""
    t = _now() if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclasses.dataclass
class Faults:
    fail_next: int = 0  # answer the next N API calls with 500
    timeout_next: int = 0  # hang the next N API calls for `timeout_s`, then 500
    timeout_s: float = 30.0
    slow_next: int = 0  # process the next N calls (webhooks go out) but answer only after `slow_s`
    slow_s: float = 2.0
    # fail_next, timeout_next and slow_next count only API calls whose "METHOD /path" ends with
    # this ("": every call): "/confirm" for the call that charges, "POST /v1/payment_intents" for a create.
    match: str = ""
    fail_match: str = ""  # the same, for fail_next alone when set (two faults on two calls at once)
    webhook_delay_s: float = 0.0
    webhook_duplicate: bool = False
    webhook_hold: bool = False  # queue webhooks until released (then sent newest first)
    # The next N PaymentIntents are created for `amount_delta` cents more than asked (a processor
    # that charges what it should not: the payments service must never credit such a charge).
    amount_delta_next: int = 0
    amount_delta: int = 0


class WebhookSender:
    """The events half of the simulator; `StripeResources` builds the REST API on it."""

    def __init__(self, *, webhook_secret: str, webhook_url: str, journal: Journal) -> None:
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.journal = journal
        self.faults = Faults()
        self.held_webhooks: list[dict[str, Any]] = []
        self.sent_webhooks: collections.deque[dict[str, Any]] = collections.deque(maxlen=SENT_KEPT_MAX)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def _later(self, delay_s: float, fn: Any, *args: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay_s)
            fn(*args)

        self._spawn(run())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, event_type: str, obj: dict[str, Any]) -> None:
        event_id = _new_id("evt")
        event: dict[str, Any] = {
            "id": event_id,
            "object": "event",
            "api_version": API_VERSION,
            "created": _now(),
            "livemode": False,
            "pending_webhooks": 1,
            "type": event_type,
            "data": {"object": json.loads(json.dumps(obj))},
        }
        if self.faults.webhook_hold:
            self.held_webhooks.append(event)
            return
        # Owed until delivered (or given up on): a restarted simulator sends it again.
        self.journal.put("events", event_id, event)
        copies = 2 if self.faults.webhook_duplicate else 1
        for _ in range(copies):
            self._spawn(self._deliver(event, self.faults.webhook_delay_s))

    def resume(self, owed: list[dict[str, Any]]) -> None:
        """Send the events a previous run of the simulator still owed (at start)."""
        for event in owed:
            self._spawn(self._deliver(event, 0))

    async def _deliver(self, event: dict[str, Any], delay_s: float) -> None:
        try:
            await self._attempts(event, delay_s)
        finally:
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                self.journal.put("events", event["id"], None)  # delivered, or given up on

    async def _attempts(self, event: dict[str, Any], delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        if not self.webhook_url:
            return
        payload = json.dumps(event)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        for attempt in range(WEBHOOK_ATTEMPTS_MAX):
            try:
                async with self._session.post(
                    self.webhook_url,
                    data=payload,
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": sign(payload, self.webhook_secret),
                    },
                ) as resp:
                    self.sent_webhooks.append({"id": event["id"], "type": event["type"], "status": resp.status})
                    if 200 <= resp.status < 300:
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.sent_webhooks.append({"id": event["id"], "type": event["type"], "status": 0, "error": str(exc)})
            await asyncio.sleep(min(WEBHOOK_BACKOFF_MAX_S, 0.2 * 2**attempt))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
