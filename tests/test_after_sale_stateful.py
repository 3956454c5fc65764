"""After the sale against a model: a hypothesis state machine mixes, for a few players of one or two
tenants, currency purchases, item spends (some beyond the balance), admin refunds (partial, the
rest, too much), dashboard refunds, disputes opened and closed won or lost, and early fraud warnings
(some refunded at once by the tenant's setting), in random order, against the real stack.

After every step each wallet's balance read equals the model (balance, pending, available, debt),
the ledger check is ok, no wallet is negative without a clawback, and a wallet in debt is refused a
spend with PLAYER_IN_DEBT. Steps that the processor's webhooks settle wait on the order's refunds,
disputes or warnings first. A machine is a unittest-style TestCase with its own event loop, as in
tests/test_ledger_model.py."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devstack.stack import Stack
from tests.after_sale_stateful_support import (
    MINOR_PER_CENT,
    REFUND_REASONS,
    Dispute,
    Order,
    Wallet,
    check_balance,
    check_order,
    units,
    usd,
)
from tests.after_sale_support import auto_refund, balance_body, refund, spend, wait_order
from tests.helpers import Api, assert_envelope
from tests.payments_support import VISA, buy, check_ledger, order, sim

T = TypeVar("T")

WALLETS = 3
PURCHASES_MAX = 8  # per wallet and machine: under the 10 attempts a player a minute
WAIT_S = 15.0

# Filled by the autouse fixture: the machine takes no fixtures, so it reads the stack from here.
_STACK: list[Stack] = []


@pytest.fixture(autouse=True)
def _after_sale_stack(stack: Stack) -> None:
    _STACK[:] = [stack]


class AfterSaleMachine(RuleBasedStateMachine):
    """One run: fresh tenants and players, so every wallet starts at zero. With two tenants the
    third wallet is the first one's email in the other tenant: the two must never mix."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = _STACK[0]
        self.loop = asyncio.new_event_loop()
        # As conftest does for pytest-asyncio's loops: an exception nobody handled fails the run.
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.api = Api(self.stack.gateway_url, admin_token=self.stack.env["INVO_ADMIN_TOKEN"])
        self.run(self.api.__aenter__())
        self.tenants: list[dict[str, Any]] = []
        self.autos: list[bool] = []  # each tenant's auto_refund_fraud_warnings
        self.wallets: list[Wallet] = []
        self.orders: list[Order] = []

    def teardown(self) -> None:
        try:
            self.run(self.api.__aexit__(None, None, None))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
        assert not self.loop_errors, [f"{c.get('message')}: {c.get('exception')!r}" for c in self.loop_errors]

    def run(self, aw: Awaitable[T]) -> T:
        return self.loop.run_until_complete(aw)

    def tenant(self, wallet: Wallet) -> dict[str, Any]:
        return self.tenants[wallet.tenant]

    def sim(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.run(sim(self.api, self.stack, action, body)))

    def read_order(self, o: Order) -> dict[str, Any]:
        return self.run(order(self.api, self.tenant(self.wallets[o.wallet]), o.order_id))

    def wait(self, o: Order, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The order once `check` holds, read again: GetOrder reads the order's row, history,
        refunds and disputes in separate statements, so the read that first satisfies `check` may
        pair a refund just committed with the row from before it (status still completed). A read
        that starts after the commit sees all of it."""
        self.run(wait_order(self.api, self.tenant(self.wallets[o.wallet]), o.order_id, check, WAIT_S))
        return self.read_order(o)

    def pick(self, i: int, eligible: list[Order]) -> Order:
        return eligible[i % len(eligible)]

    def apply_refund(self, o: Order, cents: int) -> int:
        """The model's refund of `cents` of the order: the currency it debits. Under an open
        dispute (an inquiry: a chargeback stops refunds) the refund's write voids the dispute's
        freeze, and what is still disputed is frozen again, at most what the player has left."""
        wallet = self.wallets[o.wallet]
        debit = o.refund_debit(cents)
        refreeze = o.dispute is not None and o.dispute.frozen > 0
        if o.dispute is not None and refreeze:
            wallet.frozen -= o.dispute.frozen
            o.dispute.frozen = 0
        o.usd_refunded += cents
        o.currency_refunded += debit
        o.refunds += 1
        wallet.balance -= debit
        wallet.clawed = wallet.clawed or debit > 0
        if o.dispute is not None and refreeze:
            o.dispute.frozen = min(o.disputed_currency(o.dispute.usd), max(0, wallet.available))
            wallet.frozen += o.dispute.frozen
        if o.remaining == 0 and o.status == "completed":
            o.status = "refunded"
        if wallet.balance < 0:
            event("a refund left a debt")
        return debit

    # -- strategies ---------------------------------------------------------------------------

    wallet_st = st.integers(0, WALLETS - 1)
    usd_st = st.integers(100, 2000)  # $1.00 .. $20.00
    index = st.integers(0, 63)
    part = st.integers(1, 100_000)

    # -- setting up ---------------------------------------------------------------------------

    @initialize(
        two=st.booleans(),
        auto_first=st.booleans(),
        first=usd_st,
        others=st.lists(st.one_of(st.none(), usd_st), min_size=WALLETS - 1, max_size=WALLETS - 1),
    )
    def open_network(self, two: bool, auto_first: bool, first: int, others: list[int | None]) -> None:
        # With two tenants they differ in the setting, so both readings of a warning come up.
        self.autos = [auto_first, not auto_first] if two else [auto_first]
        for on in self.autos:
            t = self.run(self.api.create_tenant(name="Stateful After Sale"))
            if on:
                self.run(auto_refund(self.api, t["tenant_id"], True))
            self.tenants.append(t)
        suffix = secrets.token_hex(4)
        emails = [f"after.sale-{suffix}-{i}@example.com" for i in range(WALLETS)]
        self.wallets = [Wallet(0, emails[i]) for i in range(WALLETS)]
        if two:
            self.wallets[-1] = Wallet(1, emails[0])
        # One order at least from the start: without one, most rules are disabled, and hypothesis
        # gives up on drawing an enabled rule often enough to waste a third of its examples.
        for w, cents in enumerate([first, *others]):
            if cents is not None:
                self.purchase(w, cents)

    # -- purchases and spends -----------------------------------------------------------------

    @precondition(lambda self: any(w.purchases < PURCHASES_MAX for w in self.wallets))
    @rule(w=wallet_st, cents=usd_st)
    def purchase(self, w: int, cents: int) -> None:
        wallet = self.wallets[w]
        if wallet.purchases >= PURCHASES_MAX:
            return
        t = self.tenant(wallet)
        resp = self.run(buy(self.api, t, wallet.email, payment_method_id=VISA, usd_amount=usd(cents)))
        assert resp.status == 200 and resp.body["status"] == "success", resp
        currency = cents * MINOR_PER_CENT
        repaid = min(currency, wallet.debt)
        body = resp.body
        assert body["currency_amount"] == units(currency), body
        assert body["debt_repaid"] == units(repaid), (body, wallet)
        assert body["currency_credited"] == units(currency - repaid), (body, wallet)
        wallet.balance += currency
        wallet.purchases += 1
        if body["new_balance"] is not None:
            assert body["new_balance"] == units(wallet.balance), (body, wallet)
        if repaid:
            event("a purchase repaid a debt")
        got = self.run(order(self.api, t, body["order_id"]))
        o = Order(body["order_id"], got["payment_intent_id"], w, cents, currency)
        check_order(o, got)
        self.orders.append(o)

    @rule(
        w=wallet_st,
        # All of it often: a refund after spending everything is what leaves a debt.
        share=st.one_of(st.just(100), st.integers(1, 100)),
        over=st.sampled_from([False, False, False, True]),
        extra=st.integers(1, 2000),
    )
    def spend(self, w: int, share: int, over: bool, extra: int) -> None:
        """An item of a random share of what is available, or of more than that."""
        wallet = self.wallets[w]
        available = max(0, wallet.available)
        price = available + extra if over or available == 0 else max(1, available * share // 100)
        resp = self.run(spend(self.api, self.tenant(wallet), wallet.email, units(price)))
        if wallet.balance < 0:
            assert_envelope(resp, 402, "PLAYER_IN_DEBT")
            event("spend refused: in debt")
        elif wallet.available < price:
            assert_envelope(resp, 402, "INSUFFICIENT_BALANCE")
            event("spend refused: insufficient" + (" (frozen)" if wallet.frozen else ""))
        else:
            assert resp.status == 200, (resp, wallet)
            wallet.balance -= price
            assert resp.body["new_balance"] == units(wallet.balance), (resp, wallet)
            event("spend ok")

    # -- refunds ------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.orders))
    @rule(
        i=index,
        kind=st.sampled_from(["part", "part", "rest", "over"]),
        part=part,
        reason=st.sampled_from(REFUND_REASONS),
    )
    def admin_refund(self, i: int, kind: str, part: int, reason: str) -> None:
        o = self.pick(i, self.orders)
        wallet = self.wallets[o.wallet]
        amount = {
            "part": 1 + part % max(1, o.remaining - 1),
            "rest": o.remaining,
            "over": o.remaining + 1 + part % 500,
        }[kind]
        sent = None if kind == "rest" else usd(amount)
        resp = self.run(refund(self.api, o.order_id, sent, reason=reason))
        if o.status != "completed":
            assert_envelope(resp, 409, "ORDER_NOT_REFUNDABLE")
            event(f"admin refund refused: {o.status}")
        elif o.dispute is not None:
            assert_envelope(resp, 409, "ORDER_DISPUTED")
            event("admin refund refused: disputed")
        elif amount > o.remaining:
            assert_envelope(resp, 400, "REFUND_EXCEEDS_REMAINING")
            assert resp.body["usd_refundable"] == usd(o.remaining), resp
            event("admin refund refused: too much")
        else:
            assert resp.status == 201, (resp, o)
            debit = self.apply_refund(o, amount)
            got = resp.body["refund"]
            assert got["status"] == "succeeded", resp
            assert (got["usd_amount"], got["currency_debited"]) == (usd(amount), units(debit)), (resp, o)
            assert (got["source"], got["reason"]) == ("admin", reason), resp
            assert got["new_balance"] == units(wallet.balance), (resp, wallet)
            assert resp.body["order"]["status"] == o.status, (resp, o)
            event(f"admin refund: {kind}")
        check_order(o, self.read_order(o))

    @precondition(lambda self: any(o.dashboard_refundable() for o in self.orders))
    @rule(i=index, rest=st.booleans(), part=part)
    def dashboard_refund(self, i: int, rest: bool, part: int) -> None:
        """A refund made in the processor's dashboard: learnt from charge.refunded."""
        o = self.pick(i, [o for o in self.orders if o.dashboard_refundable()])
        amount = o.remaining if rest else 1 + part % o.remaining
        body: dict[str, Any] = {"payment_intent": o.payment_intent_id}
        if not rest:
            body["amount"] = amount
        made = self.sim("refund", body)

        def applied(got: dict[str, Any]) -> bool:
            states = {r["processor_refund_id"]: r["status"] for r in got["refunds"]}
            return states.get(made["id"]) == "succeeded" and "pending" not in states.values()

        got = self.wait(o, applied)
        debit = self.apply_refund(o, amount)
        mine = next(r for r in got["refunds"] if r["processor_refund_id"] == made["id"])
        assert (mine["source"], mine["usd_amount"], mine["currency_debited"]) == (
            "processor",
            usd(amount),
            units(debit),
        )
        check_order(o, got)
        event("dashboard refund" + (" during an inquiry" if o.dispute else ""))

    # -- disputes -----------------------------------------------------------------------------

    @precondition(lambda self: any(o.disputable() for o in self.orders))
    @rule(i=index, inquiry=st.booleans(), partial=st.booleans(), part=part)
    def open_dispute(self, i: int, inquiry: bool, partial: bool, part: int) -> None:
        """A chargeback or an inquiry, of all the charge or part of it; a refunded charge may be
        disputed too (nothing of its currency is left to freeze or take back)."""
        o = self.pick(i, [o for o in self.orders if o.disputable()])
        wallet = self.wallets[o.wallet]
        amount = 1 + part % o.usd if partial else o.usd
        body: dict[str, Any] = {"payment_intent": o.payment_intent_id, "inquiry": inquiry}
        if partial:
            body["amount"] = amount
        made = self.sim("dispute", body)
        frozen = min(o.disputed_currency(amount), max(0, wallet.available))
        got = self.wait(o, lambda g: any(d["dispute_id"] == made["id"] for d in g["disputes"]))
        shown = next(d for d in got["disputes"] if d["dispute_id"] == made["id"])
        status = "warning_needs_response" if inquiry else "needs_response"
        assert (shown["status"], shown["inquiry"], shown["outcome"]) == (status, inquiry, None), shown
        assert (shown["usd_amount"], shown["currency_frozen"]) == (usd(amount), units(frozen)), (shown, o, wallet)
        o.dispute = Dispute(made["id"], amount, inquiry, frozen)
        o.disputes += 1
        wallet.frozen += frozen
        check_order(o, got)
        kind = "inquiry" if inquiry else "chargeback"
        event(f"{kind} opened on a {o.status} order" + ("" if frozen else ", nothing to freeze"))

    @precondition(lambda self: any(o.dispute is not None for o in self.orders))
    @rule(i=index, won=st.booleans())
    def close_dispute(self, i: int, won: bool) -> None:
        o = self.pick(i, [o for o in self.orders if o.dispute is not None])
        d = o.dispute
        assert d is not None
        wallet = self.wallets[o.wallet]
        close = "warning_closed" if d.inquiry else ("won" if won else "lost")
        self.sim("dispute", {"payment_intent": o.payment_intent_id, "close": close})
        got = self.wait(
            o, lambda g: any(x["dispute_id"] == d.dispute_id and x["closed_at"] is not None for x in g["disputes"])
        )
        claw = o.disputed_currency(d.usd) if close == "lost" else 0
        wallet.frozen -= d.frozen
        wallet.balance -= claw
        wallet.clawed = wallet.clawed or claw > 0
        o.currency_clawed += claw
        o.dispute = None
        if close == "lost" and o.status == "completed":
            o.status = "disputed_lost"
        shown = next(x for x in got["disputes"] if x["dispute_id"] == d.dispute_id)
        assert (shown["status"], shown["outcome"], shown["currency_debited"]) == (close, close, units(claw)), shown
        check_order(o, got)
        event(f"dispute closed {close} on a {o.status} order" + (" into a debt" if wallet.balance < 0 else ""))

    # -- early fraud warnings -----------------------------------------------------------------

    @precondition(lambda self: bool(self.orders))
    @rule(i=index, actionable=st.sampled_from([True, True, False]))
    def fraud_warning(self, i: int, actionable: bool) -> None:
        o = self.pick(i, self.orders)
        # "Undisputed" as the payments service reads it: no dispute on record, closed ones included.
        refundable = o.status == "completed" and o.disputes == 0 and o.remaining > 0
        recommendation = "consider_refund" if actionable and refundable else "monitor"
        auto = recommendation == "consider_refund" and self.autos[self.wallets[o.wallet].tenant]
        made = self.sim("efw", {"payment_intent": o.payment_intent_id, "actionable": actionable})

        def recorded(got: dict[str, Any]) -> bool:
            w = next((w for w in got["fraud_warnings"] if w["warning_id"] == made["id"]), None)
            if w is None or not auto:
                return w is not None
            states = {r["refund_id"]: r["status"] for r in got["refunds"]}
            return states.get(w["refund_id"]) == "succeeded" and "pending" not in states.values()

        got = self.wait(o, recorded)
        shown = next(w for w in got["fraud_warnings"] if w["warning_id"] == made["id"])
        assert (shown["actionable"], shown["recommendation"]) == (actionable, recommendation), (shown, o)
        o.warnings += 1
        if auto:
            amount = o.remaining
            debit = self.apply_refund(o, amount)
            mine = next(r for r in got["refunds"] if r["refund_id"] == shown["refund_id"])
            assert (mine["source"], mine["reason"]) == ("fraud_warning", "fraudulent"), mine
            assert (mine["usd_amount"], mine["currency_debited"]) == (usd(amount), units(debit)), (mine, o)
        else:
            assert shown["refund_id"] is None, shown
        check_order(o, got)
        event(f"fraud warning: {recommendation}" + (", refunded" if auto else ""))

    # -- after every step ---------------------------------------------------------------------

    @invariant()
    def wallets_match_the_model(self) -> None:
        for wallet in self.wallets:
            check_balance(wallet, self.run(balance_body(self.api, self.tenant(wallet), wallet.email)))
        self.run(check_ledger(self.api))
        for wallet in self.wallets:
            if wallet.balance < 0:
                event("a wallet carries a debt")
                resp = self.run(spend(self.api, self.tenant(wallet), wallet.email, "0.01"))
                assert_envelope(resp, 402, "PLAYER_IN_DEBT")


TestAfterSaleModel = AfterSaleMachine.TestCase
TestAfterSaleModel.settings = settings(
    max_examples=8,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
