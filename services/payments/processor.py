"""The card processor: Stripe through the `stripe` SDK (the simulator in development and tests, by
base address only), behind the shared circuit breaker (services/common/breaker.py).

The breaker counts consecutive processor failures (5xx, timeouts, connection errors; never a card
decline). While it is open, calls are refused at once with 503 PROCESSOR_UNAVAILABLE.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import stripe

from services.common import errors
from services.common.breaker import CircuitBreaker

log = logging.getLogger("invo.payments.processor")


class ProcessorUnavailable(errors.Unavailable):
    default_error = "processor_unavailable"
    default_error_code = "PROCESSOR_UNAVAILABLE"


class KeyConflict(errors.Conflict):
    """The processor refused our idempotency key as used before with other parameters (an order
    created by an older version of this code, say): what it made then is not known here."""


class RefundRefused(Exception):
    """The processor refused a refund (it answered: not an outage): its code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class Outcome:
    """What became of a PaymentIntent: `status` is Stripe's (succeeded, requires_action, ...) or
    "declined" for a card error."""

    status: str
    payment_intent_id: str = ""
    client_secret: str = ""
    failure_code: str = ""
    failure_message: str = ""
    decline_code: str = ""
    # What the processor says the PaymentIntent is for (None: it did not say, as on a decline).
    amount: int | None = None
    amount_received: int | None = None
    currency: str = ""
    charge_id: str = ""  # the charge a succeeded PaymentIntent made (Stripe's latest_charge)


def _plain(obj: Any) -> dict[str, Any]:
    """The SDK's StripeObject as a plain dict (it refuses dict methods)."""
    if obj is None:
        return {}
    to_dict = getattr(obj, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else dict(obj)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def outcome_of(pi: dict[str, Any]) -> Outcome:
    """The Outcome of a PaymentIntent as the processor renders it (an API answer or a webhook's
    `data.object`)."""
    err = pi.get("last_payment_error") or {}
    return Outcome(
        status=pi["status"],
        payment_intent_id=pi["id"],
        client_secret=pi.get("client_secret") or "",
        failure_code=(err.get("code") or "") if err else "",
        failure_message=(err.get("message") or "") if err else "",
        decline_code=(err.get("decline_code") or "") if err else "",
        amount=_int_or_none(pi.get("amount")),
        amount_received=_int_or_none(pi.get("amount_received")),
        currency=str(pi.get("currency") or ""),
        charge_id=pi["latest_charge"] if isinstance(pi.get("latest_charge"), str) else "",
    )


def _outcome(stripe_pi: Any) -> Outcome:
    return outcome_of(_plain(stripe_pi))


class Processor:
    def __init__(self, *, api_key: str, api_base: str, timeout_s: float, failures_max: int, cooldown_s: float) -> None:
        self.http = stripe.AIOHTTPClient(timeout=timeout_s)
        base: Any = {"api": api_base} if api_base else None
        self.client = stripe.StripeClient(api_key, base_addresses=base, http_client=self.http, max_network_retries=0)
        self.breaker = CircuitBreaker(
            name="processor",
            failures_max=failures_max,
            cooldown_s=cooldown_s,
            error=ProcessorUnavailable,
            message="The card processor is unavailable; nothing was charged. Retry shortly.",
        )

    async def _guarded(self, call: Any) -> Any:
        self.breaker.before_call()
        try:
            result = await call
        except stripe.CardError:
            self.breaker.record_success()  # the processor answered: a decline is not an outage
            raise
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError, TimeoutError) as exc:
            self.breaker.record_failure()
            log.warning("processor call failed: %s", type(exc).__name__)
            raise ProcessorUnavailable(
                "The card processor did not answer; retry with the same purchase_reference.",
            ) from exc
        except stripe.StripeError:
            self.breaker.record_success()
            raise
        except BaseException:
            self.breaker.abandon()  # cancelled (the caller's deadline) or unexpected: no verdict
            raise
        self.breaker.record_success()
        return result

    def _declined(self, exc: stripe.CardError) -> Outcome:
        err = _plain(exc.error)
        pi_obj = err.get("payment_intent") or {}
        return Outcome(
            status="declined",
            payment_intent_id=pi_obj.get("id") or "",
            failure_code=exc.code or "card_declined",
            failure_message=exc.user_message or "Your card was declined.",
            decline_code=err.get("decline_code") or "",
        )

    async def create_intent(
        self,
        *,
        order_id: str,
        usd_cents: int,
        payment_method_id: str,
        metadata: dict[str, str],
        customer_id: str = "",
        save_card: bool = False,
    ) -> Outcome:
        """Create the order's PaymentIntent, unconfirmed: nothing is charged until `confirm`. The
        caller stores its id before confirming, so the order never gets a second PaymentIntent that
        could be charged: a retry, confirm-payment or the recovery loop drives the stored one.
        The idempotency key (the order id) makes a retry after a lost answer the same intent while
        the processor remembers the key (Stripe: 24 hours); after that a retry makes an orphan
        that nobody confirms, which charges nothing.

        A checkout order names the player's Customer; with `save_card` the processor attaches the
        card to it once the payment succeeds (Stripe's `setup_future_usage`), never on a decline."""
        params: dict[str, Any] = {
            "amount": usd_cents,
            "currency": "usd",
            "payment_method": payment_method_id,
            "confirm": False,
            "metadata": {**metadata, "order_id": order_id},
        }
        if customer_id:  # only then: a direct purchase's parameters stay what they always were
            params["customer"] = customer_id
            if save_card:
                params["setup_future_usage"] = "off_session"
        try:
            pi = await self._guarded(
                self.client.v1.payment_intents.create_async(
                    params=params,  # type: ignore[arg-type]
                    options={"idempotency_key": f"invo-order-{order_id}"},
                )
            )
        except stripe.IdempotencyError as exc:
            raise KeyConflict("The processor refused the order's idempotency key.") from exc
        except stripe.InvalidRequestError as exc:
            raise errors.InvalidRequest(
                exc.user_message or "The payment method was refused by the processor.",
                error_code="INVALID_PAYMENT_METHOD",
                extra={"param": "payment_method_id"},
            ) from exc
        return _outcome(pi)

    async def confirm(self, *, order_id: str, payment_intent_id: str) -> Outcome:
        """Confirm (charge) the order's stored PaymentIntent. If it cannot be confirmed any more
        (confirmed already by an earlier call whose answer was lost, or cancelled), its current
        state is the answer.

        No idempotency key: the intent's own state makes a second confirm harmless (refused as
        `payment_intent_unexpected_state`, then read), whereas Stripe replays a key's first answer
        for 24 hours, a transient 500 included, which would wedge the order for a day."""
        try:
            pi = await self._guarded(self.client.v1.payment_intents.confirm_async(payment_intent_id))
        except stripe.CardError as exc:
            return self._declined(exc)
        except stripe.InvalidRequestError as exc:
            if exc.code != "payment_intent_unexpected_state":
                raise errors.NotFound("No such payment intent.", error_code="PAYMENT_INTENT_NOT_FOUND") from exc
            return await self.retrieve(payment_intent_id)
        return _outcome(pi)

    async def retrieve(self, payment_intent_id: str) -> Outcome:
        try:
            pi = await self._guarded(self.client.v1.payment_intents.retrieve_async(payment_intent_id))
        except stripe.InvalidRequestError as exc:
            raise errors.NotFound("No such payment intent.", error_code="PAYMENT_INTENT_NOT_FOUND") from exc
        return _outcome(pi)

    async def cancel(self, *, order_id: str, payment_intent_id: str) -> Outcome:
        """Cancel a PaymentIntent nobody will confirm (an abandoned 3-D Secure challenge). If it
        can no longer be cancelled (the cardholder finished at the last moment, or it was cancelled
        already), its current state is the answer, so the caller settles the order from that."""
        try:
            pi = await self._guarded(
                self.client.v1.payment_intents.cancel_async(
                    payment_intent_id,
                    params={"cancellation_reason": "abandoned"},
                    options={"idempotency_key": f"invo-cancel-{order_id}"},
                )
            )
        except stripe.InvalidRequestError as exc:
            if exc.code != "payment_intent_unexpected_state":
                raise errors.NotFound("No such payment intent.", error_code="PAYMENT_INTENT_NOT_FOUND") from exc
            return await self.retrieve(payment_intent_id)
        return _outcome(pi)

    # -- refunds and disputes ---------------------------------------------------------------

    async def refund(
        self, *, payment_intent_id: str, usd_cents: int, reason: str, idempotency_key: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        """Refund part or all of a PaymentIntent's charge. The caller's idempotency key is the
        processor's: a retry with it is the same refund, never a second one. A refund the
        processor refuses (more than remains, a disputed charge) is `RefundRefused`."""
        try:
            refund = await self._guarded(
                self.client.v1.refunds.create_async(
                    params={
                        "payment_intent": payment_intent_id,
                        "amount": usd_cents,
                        "reason": reason,  # type: ignore[typeddict-item,unused-ignore]
                        "metadata": metadata,
                    },
                    options={"idempotency_key": idempotency_key},
                )
            )
        except stripe.IdempotencyError as exc:
            raise errors.Conflict(
                "This refund is being processed; retry with the same idempotency_key.", error_code="REFUND_IN_PROGRESS"
            ) from exc
        except ProcessorUnavailable as exc:
            raise ProcessorUnavailable(
                "The card processor did not answer; nothing was refunded yet. Retry with the same idempotency_key."
            ) from exc
        except stripe.InvalidRequestError as exc:
            raise RefundRefused(exc.code or "", exc.user_message or "The processor refused the refund.") from exc
        return _plain(refund)

    async def refunds_of(self, payment_intent_id: str, *, pages_max: int = 10) -> list[dict[str, Any]]:
        """Every refund of a PaymentIntent, oldest first (at most `pages_max` pages of 100)."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"payment_intent": payment_intent_id, "limit": 100}
        for _ in range(pages_max):
            page = _plain(await self._guarded(self.client.v1.refunds.list_async(params=params)))  # type: ignore[arg-type]
            data = [_plain(r) for r in page.get("data") or []]
            found.extend(data)
            if not page.get("has_more") or not data:
                break
            params["starting_after"] = data[-1]["id"]
        found.sort(key=lambda r: (r.get("created") or 0, r.get("id") or ""))
        return found

    async def close(self) -> None:
        await self.http.close_async()
