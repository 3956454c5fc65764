"""A card-processor simulator that speaks the subset of Stripe's REST API the payments service uses.

The payments service talks to it through the real `stripe` SDK with only the base address changed,
so production and tests run one code path. It implements:

- Customers, PaymentMethods (Stripe's test ids), PaymentIntents (create / retrieve / confirm /
  cancel, with Stripe's status machine), Refunds; form-encoded bodies, Bearer auth, Stripe's error
  objects (`card_error` with `decline_code` on a 402), and `Idempotency-Key` replays.
- Signed processor webhooks (`Stripe-Signature: t=...,v1=...`) for `payment_intent.succeeded`,
  `payment_intent.payment_failed`, `payment_intent.canceled`, `charge.refunded`,
  `charge.dispute.created`, `charge.dispute.closed`, `radar.early_fraud_warning.created`.
- Test controls under `/_sim/`: complete or fail a 3-D Secure challenge, make the next N calls fail
  with 500s, time out, or succeed but answer late; charge another amount than asked; delay
  webhooks, send each webhook twice, hold webhooks back and release them in reverse order; list
  what was called and sent.

State is in memory: the simulator is a development and test tool, not a store of record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import signal
import time
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("invo.processor_sim")

# Stripe's test payment methods, and what each does in the simulator.
TEST_CARDS: dict[str, dict[str, Any]] = {
    "pm_card_visa": {"brand": "visa", "last4": "4242", "outcome": "succeed"},
    "pm_card_mastercard": {"brand": "mastercard", "last4": "4444", "outcome": "succeed"},
    "pm_card_chargeDeclined": {
        "brand": "visa",
        "last4": "0002",
        "outcome": "decline",
        "decline_code": "generic_decline",
    },
    "pm_card_chargeDeclinedInsufficientFunds": {
        "brand": "visa",
        "last4": "9995",
        "outcome": "decline",
        "decline_code": "insufficient_funds",
    },
    "pm_card_authenticationRequired": {"brand": "visa", "last4": "3184", "outcome": "3ds"},
    "pm_card_threeDSecure2Required": {"brand": "visa", "last4": "3220", "outcome": "3ds"},
    "pm_card_createDispute": {"brand": "visa", "last4": "0259", "outcome": "succeed", "after": "dispute"},
    "pm_card_createDisputeInquiry": {"brand": "visa", "last4": "1976", "outcome": "succeed", "after": "dispute"},
    "pm_card_radarEarlyFraudWarning": {"brand": "visa", "last4": "5423", "outcome": "succeed", "after": "efw"},
}
DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
}
API_VERSION = "2025-01-27.acacia"
IDEMPOTENCY_TTL_S = 24 * 3600
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS_MAX = 5


def _now() -> int:
    return int(time.time())


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][c]=1&items[0]=x` -> {"a": {"b": {"c": "1"}}, "items": {"0": "x"}} (Stripe's encoding)."""
    out: dict[str, Any] = {}
    for raw_key, value in pairs:
        parts = re.findall(r"[^\[\]]+", raw_key)
        if not parts:
            continue
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"conflicting parameter {raw_key}")
            node = child
        node[parts[-1]] = value
    return out


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """Stripe's scheme: v1 = hex HMAC-SHA256 of "<t>.<payload>" keyed by the endpoint secret."""
    t = _now() if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class StripeError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


def invalid(message: str, param: str | None = None) -> StripeError:
    err: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if param:
        err["param"] = param
    return StripeError(400, err)


@dataclasses.dataclass
class Faults:
    fail_next: int = 0  # answer the next N API calls with 500
    timeout_next: int = 0  # hang the next N API calls for `timeout_s`, then 500
    timeout_s: float = 30.0
    slow_next: int = 0  # process the next N calls (webhooks go out) but answer only after `slow_s`
    slow_s: float = 2.0
    webhook_delay_s: float = 0.0
    webhook_duplicate: bool = False
    webhook_hold: bool = False  # queue webhooks until released (then sent newest first)
    # The next N PaymentIntents are created for `amount_delta` cents more than asked (a processor
    # that charges what it should not: the payments service must never credit such a charge).
    amount_delta_next: int = 0
    amount_delta: int = 0


class Simulator:
    def __init__(self, *, secret_key: str, webhook_secret: str, webhook_url: str) -> None:
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.customers: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.idempotency: dict[str, tuple[float, str, int, dict[str, Any]]] = {}
        self.faults = Faults()
        self.held_webhooks: list[dict[str, Any]] = []
        self.sent_webhooks: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []  # (method, path) of every API call, for tests
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- objects ----------------------------------------------------------------------------

    def _payment_method(self, pm_id: str) -> dict[str, Any]:
        pm = self.payment_methods.get(pm_id)
        if pm is not None:
            return pm
        card = TEST_CARDS.get(pm_id)
        if card is None:
            raise StripeError(
                404,
                {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "param": "payment_method",
                    "message": f"No such PaymentMethod: '{pm_id}'",
                },
            )
        pm = {
            "id": pm_id,
            "object": "payment_method",
            "type": "card",
            "card": {"brand": card["brand"], "last4": card["last4"], "exp_month": 12, "exp_year": 2034},
            "customer": None,
            "created": _now(),
            "livemode": False,
        }
        self.payment_methods[pm_id] = pm
        return pm

    def _intent(self, pi_id: str) -> dict[str, Any]:
        pi = self.intents.get(pi_id)
        if pi is None:
            raise StripeError(
                404,
                {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "message": f"No such payment_intent: '{pi_id}'",
                },
            )
        return pi

    def _charge(self, pi: dict[str, Any]) -> dict[str, Any]:
        charge = {
            "id": _new_id("ch"),
            "object": "charge",
            "amount": pi["amount"],
            "amount_refunded": 0,
            "currency": pi["currency"],
            "payment_intent": pi["id"],
            "payment_method": pi["payment_method"],
            "refunded": False,
            "disputed": False,
            "status": "succeeded",
            "created": _now(),
            "metadata": pi["metadata"],
        }
        self.charges[charge["id"]] = charge
        return charge

    def _succeed(self, pi: dict[str, Any]) -> None:
        charge = self._charge(pi)
        pi.update(status="succeeded", latest_charge=charge["id"], next_action=None, last_payment_error=None)
        pi["amount_received"] = pi["amount"]
        self._emit("payment_intent.succeeded", pi)
        after = TEST_CARDS.get(pi["payment_method"], {}).get("after")
        if after == "dispute":
            self._later(0.2, self._open_dispute, charge)
        elif after == "efw":
            self._later(0.2, self._early_fraud_warning, charge)

    def _decline(self, pi: dict[str, Any], decline_code: str) -> StripeError:
        error = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": DECLINE_MESSAGES.get(decline_code, "Your card was declined."),
            "payment_method": self.payment_methods.get(pi["payment_method"]),
        }
        pi.update(status="requires_payment_method", last_payment_error=error)
        self._emit("payment_intent.payment_failed", pi)
        return StripeError(402, {**error, "payment_intent": dict(pi)})

    def _confirm(self, pi: dict[str, Any]) -> dict[str, Any]:
        if pi["status"] not in ("requires_confirmation", "requires_payment_method"):
            raise StripeError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "payment_intent_unexpected_state",
                    "message": f"This PaymentIntent's status is {pi['status']}; it cannot be confirmed.",
                },
            )
        if not pi.get("payment_method"):
            raise invalid("You must provide a payment_method to confirm this PaymentIntent.", "payment_method")
        card = TEST_CARDS.get(pi["payment_method"], {"outcome": "succeed"})
        if card["outcome"] == "decline":
            raise self._decline(pi, card["decline_code"])
        if card["outcome"] == "3ds":
            pi.update(
                status="requires_action",
                next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}},
            )
            return pi
        self._succeed(pi)
        return pi

    # -- webhooks ---------------------------------------------------------------------------

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
        event = {
            "id": _new_id("evt"),
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
        copies = 2 if self.faults.webhook_duplicate else 1
        for _ in range(copies):
            self._spawn(self._deliver(event, self.faults.webhook_delay_s))

    async def _deliver(self, event: dict[str, Any], delay_s: float) -> None:
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
            await asyncio.sleep(min(2.0, 0.2 * 2**attempt))

    def _open_dispute(self, charge: dict[str, Any]) -> None:
        dispute = {
            "id": _new_id("dp"),
            "object": "dispute",
            "amount": charge["amount"],
            "charge": charge["id"],
            "payment_intent": charge["payment_intent"],
            "reason": "fraudulent",
            "status": "needs_response",
            "created": _now(),
        }
        charge["disputed"] = True
        charge["dispute"] = dispute
        self._emit("charge.dispute.created", dispute)

    def _early_fraud_warning(self, charge: dict[str, Any]) -> None:
        self._emit(
            "radar.early_fraud_warning.created",
            {
                "id": _new_id("issfr"),
                "object": "radar.early_fraud_warning",
                "actionable": True,
                "charge": charge["id"],
                "payment_intent": charge["payment_intent"],
                "fraud_type": "made_with_stolen_card",
                "created": _now(),
            },
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- the REST API -----------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        if request.headers.get("Authorization", "") != f"Bearer {self.secret_key}":
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided."}}, status=401
            )
        if self.faults.timeout_next > 0:
            self.faults.timeout_next -= 1
            await asyncio.sleep(self.faults.timeout_s)
            return web.json_response({"error": {"type": "api_error", "message": "timed out"}}, status=500)
        if self.faults.fail_next > 0:
            self.faults.fail_next -= 1
            return web.json_response({"error": {"type": "api_error", "message": "Simulated failure."}}, status=500)
        form = await request.post() if request.method == "POST" else {}
        params = decode_form([(k, v) for k, v in form.items() if isinstance(v, str)])
        params.update(decode_form(list(request.query.items())))
        key = request.headers.get("Idempotency-Key")
        fingerprint = json.dumps([request.method, request.path, params], sort_keys=True)
        if request.method == "POST" and key:
            stored = self.idempotency.get(key)
            if stored is not None and stored[0] > time.time():
                if stored[1] != fingerprint:
                    return web.json_response(
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used with the same parameters "
                                "they were first used with.",
                            }
                        },
                        status=400,
                    )
                return web.json_response(stored[3], status=stored[2], headers={"Idempotent-Replayed": "true"})
        try:
            status, body = 200, self._route(request.method, request.path, params)
        except StripeError as exc:
            status, body = exc.status, {"error": exc.body}
        if request.method == "POST" and key and status < 500:
            self.idempotency[key] = (time.time() + IDEMPOTENCY_TTL_S, fingerprint, status, body)
        if self.faults.slow_next > 0:
            # The work is done and its webhook sent: only the answer is late (a lost response).
            self.faults.slow_next -= 1
            await asyncio.sleep(self.faults.slow_s)
        return web.json_response(body, status=status)

    def _route(self, method: str, path: str, p: dict[str, Any]) -> dict[str, Any]:
        parts = path.strip("/").split("/")[1:]  # drop "v1"
        if parts == ["customers"] and method == "POST":
            cus = {
                "id": _new_id("cus"),
                "object": "customer",
                "email": p.get("email"),
                "metadata": p.get("metadata", {}),
                "created": _now(),
            }
            self.customers[cus["id"]] = cus
            return cus
        if len(parts) == 2 and parts[0] == "customers" and method == "GET":
            if parts[1] not in self.customers:
                raise StripeError(404, {"type": "invalid_request_error", "message": f"No such customer: '{parts[1]}'"})
            return self.customers[parts[1]]
        if len(parts) == 2 and parts[0] == "payment_methods" and method == "GET":
            return self._payment_method(parts[1])
        if len(parts) == 3 and parts[0] == "payment_methods" and parts[2] == "attach" and method == "POST":
            pm = self._payment_method(parts[1])
            pm["customer"] = p.get("customer")
            return pm
        if parts == ["payment_intents"] and method == "POST":
            return self._create_intent(p)
        if len(parts) == 2 and parts[0] == "payment_intents" and method == "GET":
            return self._intent(parts[1])
        if len(parts) == 3 and parts[0] == "payment_intents" and method == "POST":
            pi = self._intent(parts[1])
            if parts[2] == "confirm":
                if p.get("payment_method"):
                    self._payment_method(p["payment_method"])
                    pi["payment_method"] = p["payment_method"]
                return self._confirm(pi)
            if parts[2] == "cancel":
                if pi["status"] in ("succeeded", "canceled"):
                    raise StripeError(
                        400,
                        {
                            "type": "invalid_request_error",
                            "code": "payment_intent_unexpected_state",
                            "message": f"You cannot cancel a PaymentIntent with a status of {pi['status']}.",
                        },
                    )
                pi.update(status="canceled", cancellation_reason=p.get("cancellation_reason", "requested_by_customer"))
                self._emit("payment_intent.canceled", pi)
                return pi
        if parts == ["refunds"] and method == "POST":
            return self._refund(p)
        raise StripeError(
            404, {"type": "invalid_request_error", "message": f"Unrecognized request URL ({method} {path})."}
        )

    def _create_intent(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            amount = int(p.get("amount", ""))
        except ValueError:
            raise invalid("Invalid integer: amount", "amount") from None
        if amount < 50:
            raise invalid("Amount must be at least $0.50 usd", "amount")
        if p.get("currency") != "usd":
            raise invalid("Invalid currency", "currency")
        pm_id = p.get("payment_method")
        if pm_id:
            self._payment_method(pm_id)
        if self.faults.amount_delta_next > 0:
            self.faults.amount_delta_next -= 1
            amount += self.faults.amount_delta
        pi_id = _new_id("pi")
        pi: dict[str, Any] = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": "usd",
            "customer": p.get("customer"),
            "payment_method": pm_id,
            "metadata": p.get("metadata", {}),
            "status": "requires_confirmation" if pm_id else "requires_payment_method",
            "client_secret": f"{pi_id}_secret_{secrets.token_hex(12)}",
            "latest_charge": None,
            "next_action": None,
            "last_payment_error": None,
            "cancellation_reason": None,
            "created": _now(),
            "livemode": False,
        }
        self.intents[pi_id] = pi
        if p.get("confirm") == "true":
            return self._confirm(pi)
        return pi

    def _refund(self, p: dict[str, Any]) -> dict[str, Any]:
        pi = self._intent(p.get("payment_intent", ""))
        charge = self.charges.get(pi.get("latest_charge") or "")
        if charge is None:
            raise invalid("This PaymentIntent has no charge to refund.", "payment_intent")
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = int(p.get("amount", remaining))
        if not 0 < amount <= remaining:
            raise invalid("Refund amount exceeds what remains of the charge.", "amount")
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refund = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "payment_intent": pi["id"],
            "status": "succeeded",
            "created": _now(),
        }
        self.refunds[refund["id"]] = refund
        self._emit("charge.refunded", charge)
        return refund

    # -- test controls ----------------------------------------------------------------------

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        action = request.match_info["action"]
        if action == "three_d_secure":
            pi = self.intents.get(body.get("payment_intent", ""))
            if pi is None or pi["status"] != "requires_action":
                return web.json_response({"error": "no payment intent awaiting 3-D Secure"}, status=400)
            if body.get("result") == "fail":
                error = {
                    "type": "card_error",
                    "code": "payment_intent_authentication_failure",
                    "message": "The cardholder failed 3-D Secure authentication.",
                }
                pi.update(status="requires_payment_method", next_action=None, last_payment_error=error)
                self._emit("payment_intent.payment_failed", pi)
            else:
                self._succeed(pi)
            return web.json_response(pi)
        if action == "faults":
            for name in ("fail_next", "timeout_next", "slow_next", "amount_delta_next", "amount_delta"):
                if name in body:
                    setattr(self.faults, name, int(body[name]))
            for name in ("timeout_s", "slow_s", "webhook_delay_s"):
                if name in body:
                    setattr(self.faults, name, float(body[name]))
            for name in ("webhook_duplicate", "webhook_hold"):
                if name in body:
                    setattr(self.faults, name, bool(body[name]))
            return web.json_response(dataclasses.asdict(self.faults))
        if action == "release_webhooks":
            held, self.held_webhooks = self.held_webhooks, []
            order = list(reversed(held)) if body.get("order", "reverse") == "reverse" else held
            for event in order:
                await self._deliver(event, 0)
            return web.json_response({"released": len(held)})
        if action == "dispute":
            pi = self.intents.get(body.get("payment_intent", ""))
            charge = self.charges.get((pi or {}).get("latest_charge") or "")
            if charge is None:
                return web.json_response({"error": "no charge"}, status=400)
            if body.get("close"):
                dispute = charge.get("dispute")
                if dispute is None:
                    return web.json_response({"error": "no dispute"}, status=400)
                dispute["status"] = "lost" if body["close"] == "lost" else "won"
                self._emit("charge.dispute.closed", dispute)
            else:
                self._open_dispute(charge)
            return web.json_response(charge)
        if action == "state":
            return web.json_response(
                {"calls": self.calls, "sent_webhooks": self.sent_webhooks, "intents": list(self.intents.values())}
            )
        if action == "reset":
            self.faults = Faults()
            self.held_webhooks.clear()
            return web.json_response({"ok": True})
        return web.json_response({"error": f"unknown control {action}"}, status=404)


def create_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/v1/{tail:.*}", sim.api)
    app.router.add_post("/_sim/{action}", sim.control)
    app.router.add_get("/_sim/{action}", sim.control)

    async def on_cleanup(_app: web.Application) -> None:
        await sim.close()

    app.on_cleanup.append(on_cleanup)
    return app


async def serve(*, host: str, port: int, secret_key: str, webhook_secret: str, webhook_url: str) -> None:
    sim = Simulator(secret_key=secret_key, webhook_secret=webhook_secret, webhook_url=webhook_url)
    runner = web.AppRunner(create_app(sim), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("processor simulator on http://%s:%s, webhooks to %s", host, port, webhook_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await runner.cleanup()
