"""The simulator's REST API: the subset of Stripe's that the payments service calls.

Customers, PaymentMethods (Stripe's test ids, see `cards.TEST_CARDS`), PaymentIntents (create /
retrieve / confirm / cancel / list, with Stripe's status machine) and their charges; form-encoded
bodies (`decode_form`), Bearer auth, Stripe's error objects (`StripeError`: `card_error` with
`decline_code` on a 402) and `Idempotency-Key` replays, for every POST of every module. Each change
emits its event through `WebhookSender`, and the API-call faults (500s, timeouts, late answers,
other amounts) apply here. What follows a sale (refunds, disputes, early fraud warnings) is in
`after_sale`, which a successful charge hands its test card's `after` to (`_after_charge`).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
import secrets
import time
from typing import Any

from aiohttp import web

from devstack.processor_sim.cards import DECLINE_MESSAGES, TEST_CARDS, behaviour
from devstack.processor_sim.state import Journal
from devstack.processor_sim.webhooks import WebhookSender, _new_id, _now

IDEMPOTENCY_TTL_S = 24 * 3600
IDEMPOTENCY_SWEEP_EVERY = 1_000
CALLS_KEPT_MAX = 10_000  # the API calls remembered for tests (/_sim/state), newest kept
LIST_LIMIT_MAX = 100  # Stripe's own bound on a list page


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


class StripeResources(WebhookSender):
    """Stripe's objects, kept in `journal` across restarts (state.py), and the REST API over them."""

    def __init__(
        self, *, secret_key: str, webhook_secret: str, webhook_url: str, journal: Journal | None = None
    ) -> None:
        journal = journal if journal is not None else Journal(None)
        super().__init__(webhook_secret=webhook_secret, webhook_url=webhook_url, journal=journal)
        self.secret_key = secret_key
        state = journal.load()
        self.customers: dict[str, dict[str, Any]] = state["customers"]
        self.payment_methods: dict[str, dict[str, Any]] = state["payment_methods"]
        self.intents: dict[str, dict[str, Any]] = state["intents"]
        self.charges: dict[str, dict[str, Any]] = state["charges"]
        # pm id -> the test id a PaymentMethod made from a card number behaves as (cards.NUMBERS)
        self.behaves_as: dict[str, str] = state["behaves_as"]
        # key -> [expires_at, request fingerprint, status, body]
        self.idempotency: dict[str, list[Any]] = state["idempotency"]
        self.owed_events: list[dict[str, Any]] = list(state["events"].values())
        self.loaded = state  # every kind on record, for the modules built on this one (after_sale)
        self._keys_since_sweep = 0
        # (method, path) of the latest API calls, for tests
        self.calls: collections.deque[tuple[str, str]] = collections.deque(maxlen=CALLS_KEPT_MAX)

    def _forget_expired_keys(self) -> None:
        """Keys older than 24 hours are forgotten, as Stripe forgets them; looked at once per
        `IDEMPOTENCY_SWEEP_EVERY` new keys, so that memory stays bounded by a day's keys."""
        self._keys_since_sweep += 1
        if self._keys_since_sweep < IDEMPOTENCY_SWEEP_EVERY:
            return
        self._keys_since_sweep = 0
        now = time.time()
        for key in [k for k, v in self.idempotency.items() if v[0] <= now]:
            del self.idempotency[key]
            self.journal.put("idempotency", key, None)

    def save(self, kind: str, obj: dict[str, Any]) -> None:
        """Record a created or changed object before the call that changed it answers."""
        self.journal.put(kind, obj["id"], obj)

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
        self.save("payment_methods", pm)
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
        self.save("charges", charge)
        return charge

    def _succeed(self, pi: dict[str, Any]) -> None:
        charge = self._charge(pi)
        pi.update(status="succeeded", latest_charge=charge["id"], next_action=None, last_payment_error=None)
        pi["amount_received"] = pi["amount"]
        self.save("intents", pi)
        self._emit("payment_intent.succeeded", pi)
        after = behaviour(pi["payment_method"], self.behaves_as.get(pi["payment_method"])).get("after")
        if after:
            self._after_charge(charge, after)

    def _after_charge(self, charge: dict[str, Any], after: str) -> None:
        """What the card does once charged ("dispute", "inquiry", "efw": after_sale)."""

    def _decline(self, pi: dict[str, Any], decline_code: str) -> StripeError:
        error = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": DECLINE_MESSAGES.get(decline_code, "Your card was declined."),
            "payment_method": self.payment_methods.get(pi["payment_method"]),
        }
        pi.update(status="requires_payment_method", last_payment_error=error)
        self.save("intents", pi)
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
        card = behaviour(pi["payment_method"], self.behaves_as.get(pi["payment_method"]))
        if card["outcome"] == "decline":
            raise self._decline(pi, card["decline_code"])
        if card["outcome"] == "3ds":
            pi.update(
                status="requires_action",
                next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}},
            )
            self.save("intents", pi)
            return pi
        self._succeed(pi)
        return pi

    # -- the REST API -----------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        if request.headers.get("Authorization", "") != f"Bearer {self.secret_key}":
            return await self._not_secret_key(request)
        call = f"{request.method} {request.path}"  # what the faults' `match` and `fail_match` end
        targeted = call.endswith(self.faults.match)
        if self.faults.timeout_next > 0 and targeted:
            self.faults.timeout_next -= 1
            await asyncio.sleep(self.faults.timeout_s)
            return web.json_response({"error": {"type": "api_error", "message": "timed out"}}, status=500)
        fail_targeted = call.endswith(self.faults.fail_match or self.faults.match)
        if self.faults.fail_next > 0 and fail_targeted:
            self.faults.fail_next -= 1
            return web.json_response({"error": {"type": "api_error", "message": "Simulated failure."}}, status=500)
        form = await request.post() if request.method == "POST" else {}
        params = decode_form([(k, v) for k, v in form.items() if isinstance(v, str)])
        params.update(decode_form(list(request.query.items())))
        key = request.headers.get("Idempotency-Key")
        # Hashed: it is journaled, and a card's number must never be (POST /v1/payment_methods).
        request_json = json.dumps([request.method, request.path, params], sort_keys=True)
        fingerprint = hashlib.sha256(request_json.encode()).hexdigest()
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
            self._forget_expired_keys()
            self.idempotency[key] = [time.time() + IDEMPOTENCY_TTL_S, fingerprint, status, body]
            self.journal.put("idempotency", key, self.idempotency[key])
        if self.faults.slow_next > 0 and targeted:
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
            self.save("customers", cus)
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
            self.save("payment_methods", pm)
            return pm
        if parts == ["payment_intents"] and method == "POST":
            return self._create_intent(p)
        if parts == ["payment_intents"] and method == "GET":
            return self._list(self.intents, p, url="/v1/payment_intents")
        if len(parts) == 2 and parts[0] == "payment_intents" and method == "GET":
            return self._intent(parts[1])
        if len(parts) == 3 and parts[0] == "payment_intents" and method == "POST":
            pi = self._intent(parts[1])
            if parts[2] == "confirm":
                if p.get("payment_method"):
                    self._usable(p["payment_method"], pi.get("customer"))
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
                self.save("intents", pi)
                self._emit("payment_intent.canceled", pi)
                return pi
        return self._route_more(method, path, parts, p)

    async def _not_secret_key(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided."}}, status=401
        )

    def _route_more(self, method: str, path: str, parts: list[str], p: dict[str, Any]) -> dict[str, Any]:
        raise StripeError(
            404, {"type": "invalid_request_error", "message": f"Unrecognized request URL ({method} {path})."}
        )

    def _usable(self, pm_id: str, customer: str | None) -> dict[str, Any]:
        return self._payment_method(pm_id)

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
            self._usable(pm_id, p.get("customer"))
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
            "setup_future_usage": p.get("setup_future_usage"),
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
        self.save("intents", pi)
        if p.get("confirm") == "true":
            return self._confirm(pi)
        return pi

    @staticmethod
    def _list(objects: dict[str, dict[str, Any]], p: dict[str, Any], *, url: str) -> dict[str, Any]:
        """Stripe's list: newest first, `limit` (1..100, default 10), `starting_after` (the last id
        of the previous page) or `ending_before`, `has_more`."""
        try:
            limit = int(p.get("limit", 10))
        except ValueError:
            raise invalid("Invalid integer: limit", "limit") from None
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise invalid(f"limit must be between 1 and {LIST_LIMIT_MAX}.", "limit")
        newest_first = list(reversed(objects.values()))
        ids = [o["id"] for o in newest_first]
        after, before = p.get("starting_after"), p.get("ending_before")
        for cursor, param in ((after, "starting_after"), (before, "ending_before")):
            if cursor and cursor not in objects:
                raise invalid(f"No such object: '{cursor}'", param)
        if after:
            page_from = newest_first[ids.index(after) + 1 :]
            page, more = page_from[:limit], len(page_from) > limit
        elif before:
            page_to = newest_first[: ids.index(before)]
            page, more = page_to[-limit:], len(page_to) > limit
        else:
            page, more = newest_first[:limit], len(newest_first) > limit
        return {"object": "list", "url": url, "has_more": more, "data": page}
