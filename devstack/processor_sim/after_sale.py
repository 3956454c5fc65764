"""What follows a sale, as Stripe has it: refunds, disputes and early fraud warnings.

REST API (the secret key):

- `POST /v1/refunds`: `payment_intent` or `charge`; `amount` (cents, default what remains of the
  charge); `reason` (duplicate, fraudulent or requested_by_customer); `metadata[...]`. A refund
  (`re_...`) succeeds at once; it adds to its charge's `amount_refunded`, sets `refunded` once
  nothing remains, and emits `charge.refunded` with the charge (which, as Stripe's, does not list
  its refunds). Several partial refunds may follow one another. Refused as Stripe refuses them (400
  `invalid_request_error`): an amount <= 0 or above what remains (param `amount`), another reason
  (param `reason`), a fully refunded charge (code `charge_already_refunded`), a charge with a
  chargeback open or lost (code `charge_disputed`; an inquiry does not stop a refund).
- `GET /v1/refunds` (filters `charge`, `payment_intent`; Stripe's pagination), `GET /v1/refunds/{id}`.
- `GET /v1/disputes` (the same filters), `GET /v1/disputes/{id}`,
  `GET /v1/radar/early_fraud_warnings/{id}`.

Stripe opens disputes and raises early fraud warnings on its own. Here the test cards do it 0.2 s
after the charge succeeds: pm_card_createDispute (4000000000000259) a chargeback, needs_response,
reason fraudulent; pm_card_createDisputeInquiry (4000000000001976) an inquiry,
warning_needs_response; pm_card_radarEarlyFraudWarning (4000000000005423) an actionable warning,
made_with_stolen_card. And the test controls do it on demand (`after_sale_control`; errors are
Stripe's error objects, `{"error": {...}}`):

- `POST /_sim/dispute` {payment_intent, inquiry?: bool, amount?: cents, reason?} opens a dispute on
  the intent's charge (`charge.dispute.created`; one open at a time); {payment_intent, close: won |
  lost | warning_closed} closes the open one (won and lost a chargeback, warning_closed an inquiry)
  and emits `charge.dispute.closed`. Answers the dispute.
- `POST /_sim/efw` {payment_intent, actionable?: bool (true), fraud_type?} raises an early fraud
  warning (`radar.early_fraud_warning.created`). Answers the warning.
- `POST /_sim/refund` {payment_intent, amount?}: a refund made in Stripe's dashboard, without our
  metadata. Answers the refund.

Every refund, dispute and warning (kinds `refunds`, `disputes`, `early_fraud_warnings`) and the
charge it changed is journaled before the call answers, so a restarted simulator knows them.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from devstack.processor_sim.resources import StripeError, StripeResources, invalid
from devstack.processor_sim.state import Journal
from devstack.processor_sim.webhooks import _new_id, _now

log = logging.getLogger("invo.processor_sim.after_sale")

AFTER_CHARGE_DELAY_S = 0.2  # how long after a test card's charge Stripe opens its dispute or warning
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
DISPUTE_REASONS = (
    "bank_cannot_process",
    "check_returned",
    "credit_not_processed",
    "customer_initiated",
    "debit_not_authorized",
    "duplicate",
    "fraudulent",
    "general",
    "incorrect_account_details",
    "insufficient_funds",
    "product_not_received",
    "product_unacceptable",
    "subscription_canceled",
    "unrecognized",
)
FRAUD_TYPES = (
    "card_never_received",
    "fraudulent_card_application",
    "made_with_counterfeit_card",
    "made_with_lost_card",
    "made_with_stolen_card",
    "misc",
    "unauthorized_use_of_card",
)
# A chargeback's money is with the bank (open) or gone (lost): Stripe refuses to refund its charge.
# An inquiry (statuses warning_...) moves no money and does not stop a refund.
REFUND_BLOCKED = ("needs_response", "under_review", "lost")
OPEN = ("needs_response", "under_review", "warning_needs_response", "warning_under_review")
CLOSES = {"won": False, "lost": False, "warning_closed": True}  # close -> whether it closes an inquiry
CONTROLS = ("dispute", "efw", "refund")


def _missing(what: str, obj_id: str, param: str | None = None) -> StripeError:
    err = {"type": "invalid_request_error", "code": "resource_missing", "message": f"No such {what}: '{obj_id}'"}
    if param:
        err["param"] = param
    return StripeError(404, err)


def _dollars(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


def _cents(value: Any, param: str) -> int:
    """A form's integer (a string) or a control's JSON one; never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise invalid(f"Invalid integer: {value}", param)
    try:
        return int(value)
    except ValueError:
        raise invalid(f"Invalid integer: {value}", param) from None


class AfterSaleResources(StripeResources):
    """Refunds, disputes and early fraud warnings over `StripeResources`' charges (mixed into the
    `Simulator` after `CardResources`)."""

    def __init__(
        self, *, secret_key: str, webhook_secret: str, webhook_url: str, journal: Journal | None = None
    ) -> None:
        super().__init__(secret_key=secret_key, webhook_secret=webhook_secret, webhook_url=webhook_url, journal=journal)
        self.refunds: dict[str, dict[str, Any]] = self.loaded["refunds"]
        self.disputes: dict[str, dict[str, Any]] = self.loaded["disputes"]
        self.early_fraud_warnings: dict[str, dict[str, Any]] = self.loaded["early_fraud_warnings"]
        # A refund and its charge are two journal lines: a process killed between them (never
        # answered) left the refund alone. The refunds on record are what the charge counts.
        refunded: dict[str, int] = {}
        for refund in self.refunds.values():
            refunded[refund["charge"]] = refunded.get(refund["charge"], 0) + refund["amount"]
        for charge_id, amount in refunded.items():
            charge = self.charges.get(charge_id)
            if charge is not None and charge["amount_refunded"] != amount:
                charge.update(amount_refunded=amount, refunded=amount >= charge["amount"])
                self.save("charges", charge)

    # -- the REST API -----------------------------------------------------------------------

    def _route_more(self, method: str, path: str, parts: list[str], p: dict[str, Any]) -> dict[str, Any]:
        if parts == ["refunds"] and method == "POST":
            return self._refund(p)
        if parts == ["refunds"] and method == "GET":
            return self._list(self._filtered(self.refunds, p), p, url="/v1/refunds")
        if len(parts) == 2 and parts[0] == "refunds" and method == "GET":
            return self.refunds.get(parts[1]) or _raise(_missing("refund", parts[1], "id"))
        if parts == ["disputes"] and method == "GET":
            return self._list(self._filtered(self.disputes, p), p, url="/v1/disputes")
        if len(parts) == 2 and parts[0] == "disputes" and method == "GET":
            return self.disputes.get(parts[1]) or _raise(_missing("dispute", parts[1], "dispute"))
        if len(parts) == 3 and parts[:2] == ["radar", "early_fraud_warnings"] and method == "GET":
            efw = self.early_fraud_warnings.get(parts[2])
            return efw or _raise(_missing("early fraud warning", parts[2], "early_fraud_warning"))
        return super()._route_more(method, path, parts, p)

    @staticmethod
    def _filtered(objects: dict[str, dict[str, Any]], p: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Stripe's `charge` and `payment_intent` filters of a list (both: both must match)."""
        wanted = {name: p[name] for name in ("charge", "payment_intent") if p.get(name)}
        return {k: o for k, o in objects.items() if all(o.get(name) == v for name, v in wanted.items())}

    def _charge_to_refund(self, p: dict[str, Any]) -> dict[str, Any]:
        charge_id, pi_id = p.get("charge"), p.get("payment_intent")
        if not charge_id and not pi_id:
            raise invalid("One of `charge` or `payment_intent` is required.")
        if charge_id:
            charge = self.charges.get(charge_id) or _raise(_missing("charge", charge_id, "charge"))
            if pi_id and charge["payment_intent"] != pi_id:
                raise invalid(f"The charge {charge_id} does not belong to the PaymentIntent {pi_id}.", "payment_intent")
            return charge
        pi = self._intent(pi_id or "")
        charge = self.charges.get(pi.get("latest_charge") or "")
        if charge is None or pi["status"] != "succeeded":
            raise invalid(
                f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund.", "payment_intent"
            )
        return charge

    def _refund(self, p: dict[str, Any]) -> dict[str, Any]:
        charge = self._charge_to_refund(p)
        reason = p.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise invalid("Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer", "reason")
        metadata = p.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise invalid("Invalid object", "metadata")
        if charge["refunded"]:
            raise StripeError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "charge_already_refunded",
                    "message": f"Charge {charge['id']} has already been refunded.",
                },
            )
        if any(d["status"] in REFUND_BLOCKED for d in self._disputes_of(charge)):
            raise StripeError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "charge_disputed",
                    "message": f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                },
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = _cents(p["amount"], "amount") if "amount" in p else remaining
        if amount <= 0:
            raise invalid("Invalid positive integer", "amount")
        if amount > remaining:
            message = f"Refund amount ({_dollars(amount)}) is greater than unrefunded amount on charge"
            raise invalid(f"{message} ({_dollars(remaining)})", "amount")
        refund = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "payment_intent": charge["payment_intent"],
            "currency": charge["currency"],
            "metadata": metadata,
            "reason": reason,
            "status": "succeeded",
            "created": _now(),
        }
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        # The refund first: a journal cut between the two lines is mended at start (__init__).
        self.refunds[refund["id"]] = refund
        self.save("refunds", refund)
        self.save("charges", charge)
        self._emit("charge.refunded", charge)
        return refund

    # -- disputes and early fraud warnings --------------------------------------------------

    def _disputes_of(self, charge: dict[str, Any]) -> list[dict[str, Any]]:
        return [d for d in self.disputes.values() if d["charge"] == charge["id"]]

    def _after_charge(self, charge: dict[str, Any], after: str) -> None:
        def raise_it() -> None:
            try:
                if after == "efw":
                    self._early_fraud_warning(charge)
                else:
                    self._open_dispute(charge, inquiry=after == "inquiry")
            except StripeError as exc:  # a test's control got there first (an open dispute)
                log.info("test card's %s on %s not raised: %s", after, charge["id"], exc)

        self._later(AFTER_CHARGE_DELAY_S, raise_it)

    def _open_dispute(
        self, charge: dict[str, Any], *, inquiry: bool = False, amount: int | None = None, reason: str = "fraudulent"
    ) -> dict[str, Any]:
        if reason not in DISPUTE_REASONS:
            raise invalid(f"Invalid dispute reason: {reason}", "reason")
        amount = charge["amount"] if amount is None else amount
        if not 0 < amount <= charge["amount"]:
            raise invalid(f"A dispute is for 1 to {charge['amount']} cents of its charge.", "amount")
        if any(d["status"] in OPEN for d in self._disputes_of(charge)):
            raise invalid(f"Charge {charge['id']} already has an open dispute.", "payment_intent")
        status = "warning_needs_response" if inquiry else "needs_response"
        dispute = {
            "id": _new_id("dp"),
            "object": "dispute",
            "amount": amount,
            "charge": charge["id"],
            "payment_intent": charge["payment_intent"],
            "currency": charge["currency"],
            "reason": reason,
            "status": status,
            "is_charge_refundable": status not in REFUND_BLOCKED and not charge["refunded"],
            "metadata": {},
            "created": _now(),
            "livemode": False,
        }
        charge["disputed"] = True
        self.disputes[dispute["id"]] = dispute
        self.save("disputes", dispute)
        self.save("charges", charge)
        self._emit("charge.dispute.created", dispute)
        return dispute

    def _close_dispute(self, charge: dict[str, Any], close: str) -> dict[str, Any]:
        if close not in CLOSES:
            raise invalid("close must be one of won, lost or warning_closed.", "close")
        dispute = next((d for d in self._disputes_of(charge) if d["status"] in OPEN), None)
        if dispute is None:
            raise invalid(f"Charge {charge['id']} has no open dispute.", "payment_intent")
        inquiry = dispute["status"].startswith("warning_")
        if CLOSES[close] != inquiry:
            kind, may = ("an inquiry", "warning_closed") if inquiry else ("a chargeback", "won or lost")
            raise invalid(f"Dispute {dispute['id']} is {kind}: it closes as {may}.", "close")
        dispute["status"] = close
        dispute["is_charge_refundable"] = close not in REFUND_BLOCKED and not charge["refunded"]
        self.save("disputes", dispute)
        self._emit("charge.dispute.closed", dispute)
        return dispute

    def _early_fraud_warning(
        self, charge: dict[str, Any], *, actionable: bool = True, fraud_type: str = "made_with_stolen_card"
    ) -> dict[str, Any]:
        if fraud_type not in FRAUD_TYPES:
            raise invalid(f"Invalid fraud_type: {fraud_type}", "fraud_type")
        efw = {
            "id": _new_id("issfr"),
            "object": "radar.early_fraud_warning",
            "actionable": actionable,
            "charge": charge["id"],
            "payment_intent": charge["payment_intent"],
            "fraud_type": fraud_type,
            "created": _now(),
            "livemode": False,
        }
        self.early_fraud_warnings[efw["id"]] = efw
        self.save("early_fraud_warnings", efw)
        self._emit("radar.early_fraud_warning.created", efw)
        return efw

    # -- the test controls ------------------------------------------------------------------

    def after_sale_control(self, action: str, body: dict[str, Any]) -> web.Response:
        """`/_sim/dispute`, `/_sim/efw`, `/_sim/refund` (see the module's doc)."""
        try:
            pi = self._intent(str(body.get("payment_intent", "")))
            if action == "refund":
                # As a refund made in the dashboard: no metadata, no reason, no idempotency key.
                params = {"payment_intent": pi["id"], **({"amount": body["amount"]} if "amount" in body else {})}
                return web.json_response(self._refund(params))
            charge = self.charges.get(pi.get("latest_charge") or "")
            if charge is None:
                raise invalid(f"The PaymentIntent {pi['id']} has no charge.", "payment_intent")
            if action == "efw":
                actionable = body.get("actionable", True)
                if not isinstance(actionable, bool):
                    raise invalid("actionable must be true or false.", "actionable")
                fraud_type = str(body.get("fraud_type", "made_with_stolen_card"))
                return web.json_response(
                    self._early_fraud_warning(charge, actionable=actionable, fraud_type=fraud_type)
                )
            if body.get("close"):
                return web.json_response(self._close_dispute(charge, str(body["close"])))
            amount = _cents(body["amount"], "amount") if "amount" in body else None
            inquiry = body.get("inquiry", False)
            if not isinstance(inquiry, bool):
                raise invalid("inquiry must be true or false.", "inquiry")
            reason = str(body.get("reason", "fraudulent"))
            return web.json_response(self._open_dispute(charge, inquiry=inquiry, amount=amount, reason=reason))
        except StripeError as exc:
            return web.json_response({"error": exc.body}, status=exc.status)


def _raise(exc: StripeError) -> Any:
    """`obj or _raise(...)`: a lookup that answers Stripe's 404 when nothing is found."""
    raise exc
