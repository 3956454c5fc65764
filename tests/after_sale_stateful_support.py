"""The model behind tests/test_after_sale_stateful.py: each wallet's balance and frozen currency, and
each order's refunded USD, debited currency and open dispute, with the money rules of the contract
(the pro-rata refund debit, the dispute's freeze and clawback) written out here, not imported from
the product, so the test checks the product against the rule rather than against itself.

Amounts are integers: USD in cents, currency in minor units (1 unit = 100 minor)."""

from __future__ import annotations

import dataclasses
from typing import Any

from services.common import money

MINOR_PER_CENT = 10  # the contract's C = 10 * U: $10.00 buys "100" units
REFUND_REASONS = ("requested_by_customer", "duplicate", "fraudulent")


def units(minor: int) -> str:
    return money.format_units(minor)


def usd(cents: int) -> str:
    return money.format_usd(cents)


@dataclasses.dataclass
class Wallet:
    tenant: int  # index into the machine's tenants
    email: str
    balance: int = 0
    frozen: int = 0  # held by open disputes (the ledger's pending debits)
    clawed: bool = False  # a refund or a lost dispute took currency back: only then may it go negative
    purchases: int = 0  # the payments service allows 10 attempts a player a minute

    @property
    def available(self) -> int:
        return self.balance - self.frozen

    @property
    def debt(self) -> int:
        return max(0, -self.balance)


@dataclasses.dataclass
class Dispute:
    dispute_id: str
    usd: int
    inquiry: bool
    frozen: int


@dataclasses.dataclass
class Order:
    order_id: str
    payment_intent_id: str
    wallet: int  # index into the machine's wallets
    usd: int
    currency: int
    usd_refunded: int = 0
    currency_refunded: int = 0
    currency_clawed: int = 0
    status: str = "completed"
    dispute: Dispute | None = None  # the open one
    disputes: int = 0  # every dispute opened, closed ones included
    refunds: int = 0  # succeeded
    warnings: int = 0

    @property
    def remaining(self) -> int:
        return self.usd - self.usd_refunded

    @property
    def unreturned(self) -> int:
        return self.currency - self.currency_refunded - self.currency_clawed

    @property
    def refundable(self) -> int:
        """usd_refundable as the order shows it: nothing unless completed and without an open dispute."""
        return self.remaining if self.status == "completed" and self.dispute is None else 0

    def refund_debit(self, cents: int) -> int:
        """The contract's rule: refund k debits C*R_k//U - C*R_(k-1)//U (R the running refunded
        USD), capped by what is unreturned."""
        before, after = self.usd_refunded, self.usd_refunded + cents
        debit = self.currency * after // self.usd - self.currency * before // self.usd
        return min(debit, self.unreturned)

    def disputed_currency(self, cents: int) -> int:
        """The dispute's USD share of the order's currency, less what refunds and clawbacks took."""
        return min(self.currency * min(cents, self.usd) // self.usd, self.unreturned)

    def disputable(self) -> bool:
        """The simulator opens one dispute at a time; a lost one ends the order's story here."""
        return self.status in ("completed", "refunded") and self.dispute is None

    def dashboard_refundable(self) -> bool:
        """What the simulator accepts as a dashboard refund: something left, and no chargeback open
        or lost (an inquiry does not stop a refund)."""
        open_chargeback = self.dispute is not None and not self.dispute.inquiry
        return self.remaining > 0 and self.status != "disputed_lost" and not open_chargeback


def check_order(model: Order, got: dict[str, Any]) -> None:
    """The partner's view of an order against the model."""
    where = (model, got)
    assert got["status"] == model.status, where
    assert got["usd_refunded"] == usd(model.usd_refunded), where
    assert got["usd_refundable"] == usd(model.refundable), where
    assert got["currency_debited"] == units(model.currency_refunded + model.currency_clawed), where
    states = [r["status"] for r in got["refunds"]]
    assert states.count("succeeded") == model.refunds and "pending" not in states, where
    assert len(got["disputes"]) == model.disputes, where
    assert len(got["fraud_warnings"]) == model.warnings, where
    open_disputes = [d for d in got["disputes"] if d["outcome"] is None]
    assert [d["dispute_id"] for d in open_disputes] == ([model.dispute.dispute_id] if model.dispute else []), where
    if model.dispute is not None:
        assert open_disputes[0]["currency_frozen"] == units(model.dispute.frozen), where


def check_balance(wallet: Wallet, got: dict[str, Any]) -> None:
    """GET /api/players/balance against the model: every amount it shows."""
    where = (wallet, got)
    shown = (got["balance"], got["pending"], got["available_balance"], got["debt"])
    assert shown == (units(wallet.balance), units(wallet.frozen), units(wallet.available), units(wallet.debt)), where
    if wallet.balance < 0 or got["balance"].startswith("-"):
        assert wallet.clawed, f"negative without a clawback: {where}"
