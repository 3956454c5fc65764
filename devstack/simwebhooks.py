"""A simulator's webhook deliveries: owed until delivered, retried with backoff, sent again after a restart.

Both development simulators (the card processor's and the ACH provider's) build on `Deliveries`.
It POSTs each webhook to the configured URL, retrying a non-2xx answer or a failed connection with
backoff (0.2 s doubling to 30 s, WEBHOOK_ATTEMPTS_MAX attempts: about four minutes, long enough to
outlast a restart of the gateway, bounded so that a webhook nobody takes ends). A webhook is
journaled (kind `events`) before it is first sent and forgotten once delivered or given up on, so a
simulator killed meanwhile sends it again when it comes back (`resume`). Every attempt is
remembered (newest SENT_KEPT_MAX) for the tests. What a webhook looks like and how it is signed is
the subclass's: `_webhook_id`, `_payload`, `_headers` (each attempt; a timestamped signature is
made afresh), `_sent_entry`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from devstack.journal import Journal

WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS_MAX = 15
WEBHOOK_BACKOFF_MAX_S = 30.0
WEBHOOK_BACKOFF_FIRST_S = 0.2
SENT_KEPT_MAX = 10_000  # delivery attempts remembered for tests, newest kept


class Deliveries:
    """The webhook half of a simulator; `journal` must have the kind `events`."""

    def __init__(self, *, webhook_url: str, journal: Journal) -> None:
        self.webhook_url = webhook_url
        self.journal = journal
        self.sent_webhooks: collections.deque[dict[str, Any]] = collections.deque(maxlen=SENT_KEPT_MAX)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- what a webhook is: the subclass's ------------------------------------------------------

    def _webhook_id(self, event: dict[str, Any]) -> str:
        return str(event["id"])

    def _payload(self, event: dict[str, Any]) -> str:
        raise NotImplementedError

    def _headers(self, event: dict[str, Any], payload: str) -> dict[str, str]:
        raise NotImplementedError

    def _sent_entry(self, event: dict[str, Any]) -> dict[str, Any]:
        """What `sent_webhooks` records of each attempt, besides its HTTP `status` (0: no answer)."""
        return {"id": self._webhook_id(event)}

    # -- tasks -----------------------------------------------------------------------------------

    def _later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay_s)
            fn(*args)

        self._spawn(run())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- delivery --------------------------------------------------------------------------------

    def _owe(self, event: dict[str, Any], *, copies: int = 1, delay_s: float = 0.0) -> None:
        """Journal the webhook as owed, then send it (`copies` times: a provider's duplicate)."""
        self.journal.put("events", self._webhook_id(event), event)
        for _ in range(copies):
            self._spawn(self._deliver(event, delay_s))

    def resume(self, owed: list[dict[str, Any]]) -> None:
        """Send the webhooks a previous run of the simulator still owed (at start)."""
        for event in owed:
            self._spawn(self._deliver(event, 0))

    async def _deliver(self, event: dict[str, Any], delay_s: float) -> None:
        try:
            await self._attempts(event, delay_s)
        finally:
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                self.journal.put("events", self._webhook_id(event), None)  # delivered, or given up on

    async def _attempts(self, event: dict[str, Any], delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        if not self.webhook_url:
            return
        payload = self._payload(event)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        for attempt in range(WEBHOOK_ATTEMPTS_MAX):
            try:
                async with self._session.post(
                    self.webhook_url, data=payload, headers=self._headers(event, payload)
                ) as resp:
                    self.sent_webhooks.append({**self._sent_entry(event), "status": resp.status})
                    if 200 <= resp.status < 300:
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.sent_webhooks.append({**self._sent_entry(event), "status": 0, "error": str(exc)})
            await asyncio.sleep(min(WEBHOOK_BACKOFF_MAX_S, WEBHOOK_BACKOFF_FIRST_S * 2**attempt))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
