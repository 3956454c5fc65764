"""The simulator's cards: Stripe's test PaymentMethod ids, and the test card numbers a card field takes.

`TEST_CARDS` are the ids a server passes (`pm_card_visa`, ...), each a behaviour. `NUMBERS` are
the test card numbers typed into the card field (`/elements/card`), each a behaviour named after
the test id that behaves the same, so both follow one table. `check_card` validates the card
details of `POST /v1/payment_methods` as Stripe does (Luhn, expiry, CVC) and returns what may be
kept: brand, last 4, expiry. The number and CVC themselves are never returned, stored or logged.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

# Stripe's test payment methods, and what each does in the simulator. "after": what Stripe does on
# its own once the card is charged (after_sale.py): a chargeback ("dispute"), an inquiry
# ("inquiry") or an early fraud warning ("efw").
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
    "pm_card_createDisputeInquiry": {"brand": "visa", "last4": "1976", "outcome": "succeed", "after": "inquiry"},
    "pm_card_radarEarlyFraudWarning": {"brand": "visa", "last4": "5423", "outcome": "succeed", "after": "efw"},
}
DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
}
# Test card numbers (the contract's table; Stripe's numbers) -> the test id that behaves the same.
# Any other number that passes Luhn succeeds, with the brand its prefix says.
NUMBERS: dict[str, str] = {
    "4242424242424242": "pm_card_visa",
    "5555555555554444": "pm_card_mastercard",
    "4000000000000002": "pm_card_chargeDeclined",
    "4000000000009995": "pm_card_chargeDeclinedInsufficientFunds",
    "4000002500003155": "pm_card_authenticationRequired",
    "4000002760003184": "pm_card_authenticationRequired",
    "4000000000003220": "pm_card_threeDSecure2Required",
    "4000000000000259": "pm_card_createDispute",
    "4000000000001976": "pm_card_createDisputeInquiry",
    "4000000000005423": "pm_card_radarEarlyFraudWarning",
}
EXPIRY_YEARS_AHEAD_MAX = 50  # Stripe refuses an expiry further ahead than this


class CardInvalid(Exception):
    """A card Stripe refuses: `card_error` (402) for a wrong number, expiry or CVC, with its code."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def brand_of(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if re.match(r"5[1-5]|2(2[2-9]|[3-6]\d|7[01]|720)", number):
        return "mastercard"
    if re.match(r"3[47]", number):
        return "amex"
    if re.match(r"6(011|5)", number):
        return "discover"
    return "unknown"


def behaviour(pm_id: str, behaves_as: str | None) -> dict[str, Any]:
    """What confirming with this PaymentMethod does: its own test id's, or its number's."""
    return TEST_CARDS.get(pm_id) or TEST_CARDS.get(behaves_as or "") or {"outcome": "succeed"}


def check_card(card: Any, today: datetime.date | None = None) -> tuple[dict[str, Any], str | None]:
    """`card[...]` of `POST /v1/payment_methods` -> (the PaymentMethod's `card`, the test id it
    behaves as, or None). Raises `CardInvalid`, or `ValueError` for a missing parameter."""
    if not isinstance(card, dict):
        raise ValueError("card")
    for name in ("number", "exp_month", "exp_year"):
        if not card.get(name):
            raise ValueError(f"card[{name}]")
    number = re.sub(r"[ -]", "", str(card["number"]))
    if not number.isdigit() or not 12 <= len(number) <= 19 or not luhn_ok(number):
        raise CardInvalid("incorrect_number", "Your card number is incorrect.", "number")
    today = today or datetime.datetime.now(datetime.UTC).date()
    month_s, year_s = str(card["exp_month"]), str(card["exp_year"])
    if not month_s.isdigit() or not 1 <= int(month_s) <= 12:
        raise CardInvalid("invalid_expiry_month", "Your card's expiration month is invalid.", "exp_month")
    if not year_s.isdigit() or len(year_s) not in (2, 4):
        raise CardInvalid("invalid_expiry_year", "Your card's expiration year is invalid.", "exp_year")
    month, year = int(month_s), int(year_s) + (2000 if len(year_s) == 2 else 0)
    if (year, month) < (today.year, today.month) or year > today.year + EXPIRY_YEARS_AHEAD_MAX:
        raise CardInvalid("invalid_expiry_year", "Your card's expiration year is invalid.", "exp_year")
    brand = brand_of(number)
    cvc = str(card.get("cvc") or "")
    if cvc and (not cvc.isdigit() or len(cvc) != (4 if brand == "amex" else 3)):
        raise CardInvalid("invalid_cvc", "Your card's security code is invalid.", "cvc")
    kept = {"brand": brand, "last4": number[-4:], "exp_month": month, "exp_year": year, "funding": "credit"}
    return kept, NUMBERS.get(number)
