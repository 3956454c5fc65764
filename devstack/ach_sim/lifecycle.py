"""A payment order's life after it is created, and the signed webhook that marks each step.

An order is created `approved`; every INVO_ACH_SIM_SETTLE_DELAY_S it moves one state on, as its
outcome (read from the account number at creation, orders.py) says: `processing`
(`begin_processing`), `sent` (`finish_processing`), then `completed` (`completed`) or, instead of
`sent`, `failed` (`failed`); a returned one is `returned` (`returned`) one delay after it completed.
The next move of each order is journaled (kind `transitions`: its state, when it is due, the
outcome), so a restarted simulator carries on where it stopped, late moves at once.

Each move POSTs `{"event": <name>, "data": <the order as of that move>}` to the webhook URL, signed
as Modern Treasury signs: `X-Signature` = hex HMAC-SHA256 of the raw body under the webhook key
(the first of INVO_ACH_WEBHOOK_KEYS), `X-Webhook-ID` unique per webhook and the same on every
retry. Delivery, retries and resending after a restart are `devstack.simwebhooks`'; like
Modern Treasury's, webhooks are sent independently, so a retried one may arrive after a later one.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

from devstack.ach_sim.orders import EVENTS, Outcome, enter, next_status
from devstack.journal import Journal
from devstack.simwebhooks import Deliveries

log = logging.getLogger("invo.ach_sim")

KINDS = ("orders", "transitions", "idempotency", "events")
EMITTED_KEPT_MAX = 2_000  # webhooks (whole bodies) remembered for tests (/_sim/webhooks), newest kept


def signature(payload: bytes, key: str) -> str:
    """Modern Treasury's X-Signature: hex HMAC-SHA256 of the raw body under the webhook key."""
    return hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()


@dataclasses.dataclass
class WebhookFaults:
    hold: bool = False  # queue webhooks until released (then sent newest first, unless told otherwise)
    duplicate: bool = False  # send each webhook twice (same X-Webhook-ID), as a provider may
    delay_s: float = 0.0  # before each webhook's first attempt


class Lifecycle(Deliveries):
    """The orders, their pending moves and their webhooks; `AchApi` builds the REST API on it."""

    def __init__(self, *, webhook_key: str, webhook_url: str, journal: Journal, settle_delay_s: float) -> None:
        super().__init__(webhook_url=webhook_url, journal=journal)
        self.webhook_key = webhook_key
        self.settle_delay_s = settle_delay_s
        state = journal.load()
        self.orders: dict[str, dict[str, Any]] = state["orders"]
        # order id -> {"to": next state, "due": Unix time, "end": outcome, "return_code": "RXX" | None}
        self.transitions: dict[str, dict[str, Any]] = state["transitions"]
        # Idempotency-Key -> [expires_at, status, body] (successful answers only, as Modern Treasury)
        self.idempotency: dict[str, list[Any]] = state["idempotency"]
        self.owed_events: list[dict[str, Any]] = list(state["events"].values())
        self.webhook_faults = WebhookFaults()
        self.held_webhooks: list[dict[str, Any]] = []
        self.emitted: collections.deque[dict[str, Any]] = collections.deque(maxlen=EMITTED_KEPT_MAX)
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def start(self) -> None:
        """At start, in the event loop: arm every pending move (late ones at once) and send the
        webhooks a previous run still owed."""
        now = time.time()
        for order_id, move in list(self.transitions.items()):
            self._arm(order_id, move["due"] - now)
        self.resume(self.owed_events)

    # -- moves ---------------------------------------------------------------------------------

    def begin(self, order: dict[str, Any], outcome: Outcome) -> None:
        """A new order: record it and its first move (before the create call answers)."""
        self.orders[order["id"]] = order
        self.journal.put("orders", order["id"], order)
        self._plan(order, outcome)

    def _plan(self, order: dict[str, Any], outcome: Outcome) -> None:
        to = next_status(order["status"], outcome)
        if to is None:
            self._cancel(order["id"])
            self.transitions.pop(order["id"], None)
            self.journal.put("transitions", order["id"], None)
            return
        move = {
            "to": to,
            "due": time.time() + self.settle_delay_s,
            "end": outcome.end,
            "return_code": outcome.return_code,
        }
        self.transitions[order["id"]] = move
        self.journal.put("transitions", order["id"], move)
        self._arm(order["id"], self.settle_delay_s)

    def _arm(self, order_id: str, delay_s: float) -> None:
        self._cancel(order_id)
        loop = asyncio.get_running_loop()
        self._timers[order_id] = loop.call_later(max(0.0, delay_s), self._due, order_id)

    def _cancel(self, order_id: str) -> None:
        timer = self._timers.pop(order_id, None)
        if timer is not None:
            timer.cancel()

    def _due(self, order_id: str) -> None:
        self._timers.pop(order_id, None)
        self.advance(order_id)

    def advance(self, order_id: str) -> bool:
        """Make the order's pending move now; False if it has none (it has ended)."""
        move = self.transitions.get(order_id)
        order = self.orders.get(order_id)
        if move is None or order is None:
            return False
        outcome = Outcome(move["end"], move["return_code"])
        before = order["status"]
        enter(order, move["to"], return_code=outcome.return_code)
        self.journal.put("orders", order_id, order)
        log.info("payment order %s: %s -> %s", order_id, before, order["status"])
        self._emit(EVENTS[order["status"]], order)
        self._plan(order, outcome)
        return True

    def force_return(self, order_id: str, code: str) -> None:
        """Return a completed order now with `code` (what a bank may do days later)."""
        self._cancel(order_id)
        self.transitions[order_id] = {"to": "returned", "due": time.time(), "end": "returned", "return_code": code}
        self.journal.put("transitions", order_id, self.transitions[order_id])
        self.advance(order_id)

    # -- webhooks ------------------------------------------------------------------------------

    def _emit(self, event_name: str, order: dict[str, Any]) -> None:
        event = {"id": str(uuid.uuid4()), "event": event_name, "data": json.loads(json.dumps(order))}
        self.emitted.append(event)
        if self.webhook_faults.hold:
            self.held_webhooks.append(event)
            return
        # Owed until delivered (or given up on): a restarted simulator sends it again.
        self._owe(event, copies=2 if self.webhook_faults.duplicate else 1, delay_s=self.webhook_faults.delay_s)

    def release_held(self, *, newest_first: bool) -> int:
        """Send the held webhooks, one after the other (each delivered, or given up on, before the
        next), newest first or in the order they were made; the count."""
        held, self.held_webhooks = self.held_webhooks, []
        ordered = list(reversed(held)) if newest_first else held
        for event in ordered:
            self.journal.put("events", event["id"], event)

        async def in_order() -> None:
            for event in ordered:
                await self._deliver(event, 0)

        self._spawn(in_order())
        return len(held)

    def _payload(self, event: dict[str, Any]) -> str:
        return json.dumps({"event": event["event"], "data": event["data"]}, separators=(",", ":"))

    def _headers(self, event: dict[str, Any], payload: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Signature": signature(payload.encode(), self.webhook_key),
            "X-Webhook-ID": event["id"],
        }

    def _sent_entry(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": event["id"],
            "event": event["event"],
            "payment_order_id": event["data"]["id"],
            "order_status": event["data"]["status"],
        }

    async def close(self) -> None:
        for order_id in list(self._timers):
            self._cancel(order_id)
        await super().close()
