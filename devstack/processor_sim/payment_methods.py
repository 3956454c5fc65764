"""The REST API a hosted checkout page needs on top of `resources`: cards entered in the browser,
saved cards, and the publishable key.

- `POST /v1/payment_methods` (`type=card&card[number]=..`): a new `pm_...` from a card's details,
  validated as Stripe does (`cards.check_card`: `card_error` incorrect_number / invalid_expiry_year /
  invalid_cvc), behaving as its number says (`cards.NUMBERS`, kept in the journal across restarts).
  Only brand, last 4 and expiry are kept; the number and CVC are neither stored nor logged.
- `customer` + `setup_future_usage` on a PaymentIntent: once it succeeds, its PaymentMethod is
  attached to the Customer; a PaymentMethod attached to another Customer than the intent's is
  refused. `GET /v1/customers/{id}/payment_methods` lists a Customer's cards (newest first) and
  `POST /v1/payment_methods/{id}/detach` removes one.
- The publishable key (`pk_...`, what a browser holds) may only create a PaymentMethod and read a
  PaymentIntent by its client secret (`GET /v1/payment_intents/{id}?client_secret=`, a reduced view
  as Stripe gives); everything else needs the secret key. These two answer CORS preflights, and
  skip the API-call faults, which model the payments service's link to the processor.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from devstack.processor_sim.cards import TEST_CARDS, CardInvalid, check_card
from devstack.processor_sim.resources import StripeError, StripeResources, decode_form, invalid
from devstack.processor_sim.state import Journal
from devstack.processor_sim.webhooks import _new_id, _now

PUBLISHABLE_KEY_DEFAULT = "pk_test_sim"
CORS_MAX_AGE_S = 600
# What a PaymentIntent read with the publishable key shows (Stripe's client-side view: no
# metadata, no Customer).
PUBLIC_INTENT_FIELDS = (
    "id",
    "object",
    "amount",
    "currency",
    "status",
    "client_secret",
    "created",
    "livemode",
    "next_action",
    "payment_method",
    "setup_future_usage",
    "cancellation_reason",
    "last_payment_error",
)
PK_REFUSED = (
    "This API call cannot be made with a publishable API key. Please use a secret API key. "
    "You can find a list of your API keys at https://dashboard.stripe.com/account/apikeys."
)


def cors_headers(request: web.Request) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        "Vary": "Origin",
    }


def _for_browser(method: str, parts: list[str]) -> bool:
    """The calls the publishable key may make (parts: the path after /v1)."""
    if method in ("POST", "OPTIONS") and parts == ["payment_methods"]:
        return True
    return method in ("GET", "OPTIONS") and len(parts) == 2 and parts[0] == "payment_intents"


def public_intent(pi: dict[str, Any]) -> dict[str, Any]:
    return {name: pi.get(name) for name in PUBLIC_INTENT_FIELDS}


def client_secret_matches(pi: dict[str, Any] | None, client_secret: str) -> bool:
    return pi is not None and hmac.compare_digest(str(pi["client_secret"]).encode(), client_secret.encode())


def wrong_client_secret() -> StripeError:
    return StripeError(
        400,
        {
            "type": "invalid_request_error",
            "code": "payment_intent_invalid_parameter",
            "param": "client_secret",
            "message": "The client_secret provided does not match any associated PaymentIntent on this account.",
        },
    )


class CardResources(StripeResources):
    def __init__(
        self,
        *,
        secret_key: str,
        webhook_secret: str,
        webhook_url: str,
        journal: Journal | None = None,
        publishable_key: str = PUBLISHABLE_KEY_DEFAULT,
    ) -> None:
        super().__init__(secret_key=secret_key, webhook_secret=webhook_secret, webhook_url=webhook_url, journal=journal)
        self.publishable_key = publishable_key

    def is_publishable_key(self, authorization: str) -> bool:
        return hmac.compare_digest(authorization.encode(), f"Bearer {self.publishable_key}".encode())

    # -- the publishable key ----------------------------------------------------------------

    async def _not_secret_key(self, request: web.Request) -> web.Response:
        parts = request.path.strip("/").split("/")[1:]
        browser = _for_browser(request.method, parts)
        headers = cors_headers(request) if browser else {}
        if request.method == "OPTIONS":
            return web.Response(status=204 if browser else 404, headers=headers)
        if not self.is_publishable_key(request.headers.get("Authorization", "")):
            return await super()._not_secret_key(request)
        if not browser:
            return web.json_response({"error": {"type": "invalid_request_error", "message": PK_REFUSED}}, status=401)
        form = await request.post() if request.method == "POST" else {}
        params = decode_form([(k, v) for k, v in form.items() if isinstance(v, str)])
        params.update(decode_form(list(request.query.items())))
        try:
            if request.method == "POST":
                body = self._create_payment_method(params)
            else:
                pi = self.intents.get(parts[1])
                if not client_secret_matches(pi, str(params.get("client_secret", ""))):
                    raise wrong_client_secret()
                body = public_intent(pi or {})
        except StripeError as exc:
            return web.json_response({"error": exc.body}, status=exc.status, headers=headers)
        return web.json_response(body, headers=headers)

    # -- the secret key's additions ---------------------------------------------------------

    def _route_more(self, method: str, path: str, parts: list[str], p: dict[str, Any]) -> dict[str, Any]:
        if parts == ["payment_methods"] and method == "POST":
            return self._create_payment_method(p)
        if len(parts) == 3 and parts[0] == "payment_methods" and parts[2] == "detach" and method == "POST":
            pm = self._payment_method(parts[1])
            if not pm.get("customer"):
                raise invalid(
                    "The payment method you provided is not attached to a customer so detachment is impossible."
                )
            pm["customer"] = None
            self.save("payment_methods", pm)
            return pm
        if len(parts) == 3 and parts[0] == "customers" and parts[2] == "payment_methods" and method == "GET":
            if parts[1] not in self.customers:
                raise StripeError(404, {"type": "invalid_request_error", "message": f"No such customer: '{parts[1]}'"})
            if p.get("type", "card") != "card":
                raise invalid("Only card payment methods are supported.", "type")
            theirs = {k: pm for k, pm in self.payment_methods.items() if pm.get("customer") == parts[1]}
            return self._list(theirs, p, url=f"/v1/customers/{parts[1]}/payment_methods")
        return super()._route_more(method, path, parts, p)

    def _create_payment_method(self, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("type") != "card":
            raise invalid("Only `type=card` is supported.", "type")
        try:
            card, behaves_as = check_card(p.get("card"))
        except ValueError as exc:
            raise invalid(f"Missing required param: {exc}.", str(exc)) from None
        except CardInvalid as exc:
            raise StripeError(
                402, {"type": "card_error", "code": exc.code, "param": exc.param, "message": exc.message}
            ) from None
        pm_id = _new_id("pm")
        pm: dict[str, Any] = {
            "id": pm_id,
            "object": "payment_method",
            "type": "card",
            "card": card,
            "customer": None,
            "created": _now(),
            "livemode": False,
        }
        if behaves_as:
            # Before the PaymentMethod: once its id is answered, what it does is on record.
            self.behaves_as[pm_id] = behaves_as
            self.journal.put("behaves_as", pm_id, behaves_as)
        self.payment_methods[pm_id] = pm
        self.save("payment_methods", pm)
        return pm

    # -- Customers on PaymentIntents ---------------------------------------------------------

    def _create_intent(self, p: dict[str, Any]) -> dict[str, Any]:
        customer = p.get("customer")
        if customer and customer not in self.customers:
            raise invalid(f"No such customer: '{customer}'", "customer")
        if p.get("setup_future_usage") not in (None, "off_session", "on_session"):
            raise invalid("Invalid setup_future_usage: must be one of off_session or on_session", "setup_future_usage")
        return super()._create_intent(p)

    def _usable(self, pm_id: str, customer: str | None) -> dict[str, Any]:
        pm = super()._usable(pm_id, customer)
        if pm.get("customer") and pm["customer"] != customer:
            raise invalid(
                f"The PaymentMethod {pm_id} is attached to another Customer than this PaymentIntent's.",
                "payment_method",
            )
        return pm

    def _succeed(self, pi: dict[str, Any]) -> None:
        pm = self.payment_methods.get(pi.get("payment_method") or "")
        # Stripe's test ids stand for a fresh card at each use: they are never attached (and stay
        # usable by every test); a card entered in the field is.
        if pi.get("setup_future_usage") and pi.get("customer") and pm and pm["id"] not in TEST_CARDS:
            if not pm.get("customer"):
                pm["customer"] = pi["customer"]
                self.save("payment_methods", pm)
        super()._succeed(pi)
