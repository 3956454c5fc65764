"""Completing or failing a 3-D Secure challenge: one function for the challenge page the
cardholder clicks (`/3ds/challenge`, pages.py) and the test control that stands in for it
(`POST /_sim/three_d_secure`, controls.py), so both leave the PaymentIntent in the same state and
send the same webhook."""

from __future__ import annotations

from typing import Any

from devstack.processor_sim.resources import StripeError, StripeResources

AUTHENTICATION_FAILED = {
    "type": "card_error",
    "code": "payment_intent_authentication_failure",
    "message": "The cardholder failed 3-D Secure authentication.",
}


def authenticate(sim: StripeResources, pi: dict[str, Any], *, succeed: bool) -> dict[str, Any]:
    """The challenge's outcome: `succeed` charges the card (and saves it, as the intent asked);
    otherwise the intent needs another payment method, with Stripe's authentication error."""
    if pi["status"] != "requires_action":
        raise StripeError(
            400,
            {
                "type": "invalid_request_error",
                "code": "payment_intent_unexpected_state",
                "message": f"This PaymentIntent's status is {pi['status']}; it is not awaiting 3-D Secure.",
            },
        )
    if succeed:
        sim._succeed(pi)
    else:
        pi.update(status="requires_payment_method", next_action=None, last_payment_error=dict(AUTHENTICATION_FAILED))
        sim.save("intents", pi)
        sim._emit("payment_intent.payment_failed", pi)
    return pi
