"""The simulator's events: building them, signing them, sending them, and the faults it plays.

`WebhookSender` is the base of the simulator: it holds the webhook settings, the `Faults` the test
controls set, and what was held back or sent. It wraps each change as a Stripe event (`evt_...`),
signs it Stripe's way (`Stripe-Signature: t=...,v1=...`, see `sign`) and has it POSTed to the gateway
(owed until delivered, retried, sent again after a restart: `devstack.simwebhooks`), or holds,
delays or duplicates it as the faults say. Every module's events go through `_emit`, so the webhook
faults apply to all of them alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from devstack.journal import Journal
from devstack.simwebhooks import WEBHOOK_ATTEMPTS_MAX, WEBHOOK_TIMEOUT_S, Deliveries

__all__ = ["API_VERSION", "WEBHOOK_ATTEMPTS_MAX", "WEBHOOK_TIMEOUT_S", "Faults", "WebhookSender", "sign"]

API_VERSION = "2025-01-27.acacia"
# Stripe retries an undelivered event for days; here about four minutes (services/common/simwebhooks.py).


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


class WebhookSender(Deliveries):
    """The events half of the simulator; `StripeResources` builds the REST API on it. Delivery
    (owed, retried, resumed after a restart) is `Deliveries`'."""

    def __init__(self, *, webhook_secret: str, webhook_url: str, journal: Journal) -> None:
        super().__init__(webhook_url=webhook_url, journal=journal)
        self.webhook_secret = webhook_secret
        self.faults = Faults()
        self.held_webhooks: list[dict[str, Any]] = []

    def _payload(self, event: dict[str, Any]) -> str:
        return json.dumps(event)

    def _headers(self, event: dict[str, Any], payload: str) -> dict[str, str]:
        return {"Content-Type": "application/json", "Stripe-Signature": sign(payload, self.webhook_secret)}

    def _sent_entry(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"id": event["id"], "type": event["type"]}

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
        self._owe(event, copies=2 if self.faults.webhook_duplicate else 1, delay_s=self.faults.webhook_delay_s)
