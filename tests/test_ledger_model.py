"""The ledger against a model: a hypothesis state machine drives random sequences of credits,
purchases, holds, posts, voids, expiries, clawbacks and idempotent replays against the real
LedgerService, and after every step checks that every balance equals a simple in-memory model,
that no constrained account is negative, and that the whole ledger still sums to zero (the Check
RPC)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Collection
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from services.common import errors, grpcutil, ids, money
from services.ledger import chart
from tests.helpers import Api
from tests.ledger_stateful_support import TIMEOUT_S, Acct, Hold, Sent, _check_ok, _idem, _posting, _triples

T = TypeVar("T")

PLAYERS = 3
HOLD_LONG_MS = 600_000  # far beyond one run: only the expiry rule's holds ever expire
EXPIRY_LIMIT = 500

# Filled by the autouse fixture below: the state machine is a unittest-style TestCase and takes
# no fixtures, so it reads the stack's addresses from here.
_ENV: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _ledger_env(stack: Stack) -> None:
    _ENV.update(
        ledger=stack.env["INVO_LEDGER_ADDR"],
        gateway=stack.gateway_url,
        admin_token=stack.env["INVO_ADMIN_TOKEN"],
    )


def _refusal(acct: Acct) -> str:
    """Why a debit the wallet cannot cover is refused: a wallet below zero carries a debt."""
    return "PLAYER_IN_DEBT" if acct.balance < 0 else "INSUFFICIENT_BALANCE"


# -- the model ----------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """One run: a fresh tenant and fresh players, so every model account starts at zero. The
    shared accounts (world:*, network:fees, transfers:held) are left out of the model; the Check
    RPC covers them, and a purchase's fee is checked as a delta of network:fees."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        # As conftest does for pytest-asyncio's loops: an exception nobody handled fails the run.
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.channel: Any = None
        try:
            self.tenant_id = self.run(self._open())
        except BaseException:
            self.teardown()
            raise
        suffix = uuid.uuid4().hex[:12]
        self.emails = [f"p{i}-{suffix}@example.com" for i in range(PLAYERS)]
        self.players = [chart.player(self.tenant_id, e) for e in self.emails]
        self.revenue = chart.revenue(self.tenant_id)
        self.model: dict[str, Acct] = {code: Acct() for code in [*self.players, self.revenue]}
        self.clawed: set[str] = set()  # players a clawback touched: only they may go below zero
        self.pending: list[Hold] = []
        self.resolved: list[Hold] = []
        self.history: list[Sent] = []

    async def _open(self) -> str:
        async with Api(_ENV["gateway"], admin_token=_ENV["admin_token"]) as api:
            tenant = await api.create_tenant(name="Stateful Ledger")
        self.channel = grpcutil.channel(_ENV["ledger"])
        self.stub = ledger_pb2_grpc.LedgerServiceStub(self.channel)
        return str(tenant["tenant_id"])

    def teardown(self) -> None:
        try:
            if self.channel is not None:
                self.loop.run_until_complete(self.channel.close())
                self.channel = None
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
        assert not self.loop_errors, [f"{c.get('message')}: {c.get('exception')!r}" for c in self.loop_errors]

    # -- calling the service ----------------------------------------------------------------

    def run(self, aw: Awaitable[T]) -> T:
        return self.loop.run_until_complete(aw)

    def call(self, method: str, request: Any) -> Any:
        return self.run(grpcutil.call(getattr(self.stub, method), request, timeout_s=TIMEOUT_S))

    def fails(self, method: str, request: Any, codes: str | Collection[str]) -> errors.InvoError:
        wanted = {codes} if isinstance(codes, str) else set(codes)
        try:
            result = self.call(method, request)
        except errors.InvoError as exc:
            assert exc.error_code in wanted, f"{method}: expected {wanted}, got {exc.error_code}: {exc.message}"
            event(f"{method} refused: {exc.error_code}")
            return exc
        raise AssertionError(f"{method} succeeded ({result}); expected {wanted}")

    def read(self, codes: list[str]) -> dict[str, tuple[int, int, int]]:
        resp = self.call("GetBalances", ledger_pb2.GetBalancesRequest(accounts=codes))
        assert [b.account for b in resp.balances] == codes
        return {b.account: (b.balance_minor, b.pending_minor, b.available_minor) for b in resp.balances}

    def expect_result(self, res: ledger_pb2.TransactionResult, status: str, touched: list[str]) -> None:
        """A fresh write's answer: not a duplicate, the status, and the touched model accounts
        as the model says they are after it."""
        event(f"write ok: {res.status}")
        assert res.duplicate is False, res
        assert res.status == status, res
        assert res.transaction_id.startswith("txn_"), res
        got = {b.account: (b.balance_minor, b.pending_minor, b.available_minor) for b in res.balances}
        for code in touched:
            assert got.get(code) == self.model[code].triple(), (code, res)

    # -- rules ------------------------------------------------------------------------------

    # Credits a little larger than debits, so that both sides of every check come up often.
    players_st = st.integers(0, PLAYERS - 1)
    credits = st.integers(1, 5000)
    amounts = st.integers(1, 2000)
    index = st.integers(0, 63)

    @initialize(opening=st.lists(st.integers(0, 5000), min_size=PLAYERS, max_size=PLAYERS))
    def open_wallets(self, opening: list[int]) -> None:
        for p, amount in enumerate(opening):
            if amount:
                self.credit(p, amount)

    @rule(p=players_st, amount=credits)
    def credit(self, p: int, amount: int) -> None:
        player = self.players[p]
        req = ledger_pb2.TransferRequest(
            tenant_id=self.tenant_id,
            kind="topup",
            postings=[_posting(chart.WORLD_PROCESSOR, -amount), _posting(player, amount)],
            idempotency=_idem(),
        )
        res = self.call("Transfer", req)
        self.model[player].balance += amount
        self.expect_result(res, "posted", [player])
        self.history.append(Sent("Transfer", req, res))

    @rule(p=players_st, amount=amounts)
    def clawback(self, p: int, amount: int) -> None:
        """A chargeback takes the coins back even if they are spent: the wallet may go into debt."""
        player = self.players[p]
        req = ledger_pb2.TransferRequest(
            tenant_id=self.tenant_id,
            kind="clawback",
            postings=[_posting(player, -amount), _posting(chart.WORLD_PROCESSOR, amount)],
            idempotency=_idem(),
            allow_debt=[player],
        )
        res = self.call("Transfer", req)
        self.model[player].balance -= amount
        self.clawed.add(player)
        self.expect_result(res, "posted", [player])
        self.history.append(Sent("Transfer", req, res))

    @precondition(lambda self: bool(self.pending))
    @rule(i=index, extra=st.integers(0, 500))
    def clawback_held(self, i: int, extra: int) -> None:
        """A clawback on a wallet with coins on hold, just past what is available: the held coins
        are no longer covered, so the hold cannot be posted (only voided) until credits return."""
        hold = self.pending[i % len(self.pending)]
        self.clawback(self.players.index(hold.player), max(self.model[hold.player].available, 0) + 1 + extra)

    @rule(p=players_st, amount=amounts)
    def debit(self, p: int, amount: int) -> None:
        """An operator's debit without allow_debt: refused exactly when it would overdraw."""
        player = self.players[p]
        req = ledger_pb2.TransferRequest(
            tenant_id=self.tenant_id,
            kind="adjustment_debit",
            postings=[_posting(player, -amount), _posting(chart.WORLD_ADJUSTMENTS, amount)],
            idempotency=_idem(),
        )
        acct = self.model[player]
        if acct.available < amount:
            self.fails("Transfer", req, _refusal(acct))
            return
        res = self.call("Transfer", req)
        acct.balance -= amount
        self.expect_result(res, "posted", [player])
        self.history.append(Sent("Transfer", req, res))

    @rule(
        p=players_st,
        price=st.integers(1, 1000),
        quantity=st.integers(1, 3),
        bps=st.one_of(st.sampled_from([0, 1, 1000, 3333, 9999, 10_000]), st.integers(0, 10_000)),
    )
    def purchase(self, p: int, price: int, quantity: int, bps: int) -> None:
        player = self.players[p]
        acct = self.model[player]
        total = price * quantity
        partner, fee = money.split_item_purchase(total, network_fee_bps=bps)
        req = ledger_pb2.PurchaseItemRequest(
            tenant_id=self.tenant_id,
            player_email=self.emails[p],
            item_id=f"item_{price}",
            item_name="Model Item",
            price_minor=price,
            quantity=quantity,
            idempotency=_idem(),
            network_fee_bps=bps,
            currency_name="Model Coins",
        )
        fees_before = self.read([chart.NETWORK_FEES])[chart.NETWORK_FEES][0]
        if acct.available < total:  # also whenever the wallet carries a debt
            self.fails("PurchaseItem", req, _refusal(acct))
            return
        res = self.call("PurchaseItem", req)
        acct.balance -= total
        self.model[self.revenue].balance += partner
        assert (res.total_minor, res.partner_amount_minor, res.network_fee_minor) == (total, partner, fee), res
        assert res.new_balance_minor == acct.balance, res
        assert res.duplicate is False, res
        event("purchase ok")
        fees_after = self.read([chart.NETWORK_FEES])[chart.NETWORK_FEES][0]
        assert fees_after - fees_before == fee
        self.history.append(Sent("PurchaseItem", req, res))

    def _hold_request(self, player: str, amount: int, expires_in_ms: int) -> ledger_pb2.CreateHoldRequest:
        return ledger_pb2.CreateHoldRequest(
            tenant_id=self.tenant_id,
            kind="transfer_hold",
            postings=[_posting(player, -amount), _posting(chart.TRANSFERS_HELD, amount)],
            idempotency=_idem(),
            expires_in_ms=expires_in_ms,
        )

    def _resolve_request(self, hold_id: str) -> ledger_pb2.ResolveHoldRequest:
        return ledger_pb2.ResolveHoldRequest(tenant_id=self.tenant_id, hold_id=hold_id, idempotency=_idem())

    @rule(p=players_st, amount=amounts)
    def hold(self, p: int, amount: int) -> None:
        player = self.players[p]
        acct = self.model[player]
        req = self._hold_request(player, amount, HOLD_LONG_MS)
        if acct.available < amount:
            self.fails("CreateHold", req, _refusal(acct))
            return
        res = self.call("CreateHold", req)
        acct.pending += amount
        self.expect_result(res, "pending", [player])
        self.pending.append(Hold(res.transaction_id, player, amount))
        self.history.append(Sent("CreateHold", req, res))

    @precondition(lambda self: bool(self.pending))
    @rule(i=index)
    def post(self, i: int) -> None:
        hold = self.pending[i % len(self.pending)]
        acct = self.model[hold.player]
        req = self._resolve_request(hold.hold_id)
        if acct.available < 0:
            # A clawback since the hold was made: the held coins are no longer all there.
            self.fails("PostHold", req, _refusal(acct))
            return
        res = self.call("PostHold", req)
        acct.balance -= hold.amount
        acct.pending -= hold.amount
        self.pending.remove(hold)
        self.resolved.append(hold)
        assert res.transaction_id == hold.hold_id
        self.expect_result(res, "posted", [hold.player])
        self.history.append(Sent("PostHold", req, res))

    @precondition(lambda self: bool(self.pending))
    @rule(i=index)
    def void(self, i: int) -> None:
        hold = self.pending[i % len(self.pending)]
        req = self._resolve_request(hold.hold_id)
        res = self.call("VoidHold", req)
        self.model[hold.player].pending -= hold.amount
        self.pending.remove(hold)
        self.resolved.append(hold)
        assert res.transaction_id == hold.hold_id
        self.expect_result(res, "voided", [hold.player])
        self.history.append(Sent("VoidHold", req, res))

    @rule(p=players_st, amount=amounts, try_post=st.booleans())
    def expire(self, p: int, amount: int, try_post: bool) -> None:
        """A hold that expires: it can no longer be posted, and ExpireHolds voids it."""
        player = self.players[p]
        acct = self.model[player]
        req = self._hold_request(player, amount, 1)
        if acct.available < amount:
            self.fails("CreateHold", req, _refusal(acct))
            return
        res = self.call("CreateHold", req)
        acct.pending += amount
        self.expect_result(res, "pending", [player])
        hold = Hold(res.transaction_id, player, amount)
        self.history.append(Sent("CreateHold", req, res))  # a replay answers "pending" even now
        time.sleep(0.01)  # past expires_at (the batch's database time + 1 ms)
        if try_post:
            # Expired but maybe not yet voided (HOLD_EXPIRED), or the background expiry was first.
            self.fails("PostHold", self._resolve_request(hold.hold_id), {"HOLD_EXPIRED", "HOLD_NOT_PENDING"})
        expired = self.call("ExpireHolds", ledger_pb2.ExpireHoldsRequest(limit=EXPIRY_LIMIT))
        # Only this hold has expired (the machine's other holds live for minutes): the call voids
        # it, or finds it voided already by the background expiry, never more than one.
        assert expired.voided in (0, 1), expired
        txn = self.call(
            "GetTransaction", ledger_pb2.GetTransactionRequest(transaction_id=hold.hold_id, tenant_id=self.tenant_id)
        )
        assert txn.status == "voided", txn
        acct.pending -= amount
        self.resolved.append(hold)

    @precondition(lambda self: bool(self.resolved))
    @rule(i=index, post=st.booleans())
    def resolve_again(self, i: int, post: bool) -> None:
        """A posted, voided or expired hold cannot be resolved again; nothing moves."""
        hold = self.resolved[i % len(self.resolved)]
        self.fails("PostHold" if post else "VoidHold", self._resolve_request(hold.hold_id), "HOLD_NOT_PENDING")

    @precondition(lambda self: bool(self.history))
    @rule(i=index)
    def replay(self, i: int) -> None:
        """The same key and the same request: the first answer again, flagged, and nothing moves."""
        sent = self.history[i % len(self.history)]
        again = self.call(sent.method, sent.request)
        expected = type(sent.response)()
        expected.CopyFrom(sent.response)
        expected.duplicate = True
        if isinstance(expected, ledger_pb2.TransactionResult):
            # The same balances, compared as a set: a replay read back from the database lists
            # them in another order than the first answer (jsonb keeps no key order).
            assert sorted(_triples(again.balances)) == sorted(_triples(expected.balances)), (again, expected)
            del again.balances[:]
            del expected.balances[:]
        assert again == expected, (sent.method, again, sent.response)

    @precondition(lambda self: bool(self.history))
    @rule(i=index, variant=st.booleans())
    def reuse_key(self, i: int, variant: bool) -> None:
        """The same key with a different request is refused, whatever the request, and nothing moves."""
        sent = self.history[i % len(self.history)]
        method = sent.method
        changed = type(sent.request)()
        changed.CopyFrom(sent.request)
        if method in ("Transfer", "CreateHold"):
            if variant:
                for posting in changed.postings:
                    posting.amount_minor *= 2
            elif method == "Transfer":
                changed.kind = changed.kind + "_other"
            else:
                changed.expires_in_ms += 1
        elif method == "PurchaseItem":
            if variant:
                changed.price_minor += 1
            else:
                changed.item_id += "_other"
        elif variant:
            # A hold's resolution key sent to the other resolution.
            method = "VoidHold" if method == "PostHold" else "PostHold"
        else:
            changed.hold_id = ids.new_id("txn")
        self.fails(method, changed, "IDEMPOTENCY_KEY_REUSED")

    # -- after every step -------------------------------------------------------------------

    @invariant()
    def balances_match_the_model(self) -> None:
        codes = list(self.model)
        got = self.read(codes)
        want = {code: acct.triple() for code, acct in self.model.items()}
        assert got == want
        for code in self.players:
            balance, pending, available = got[code]
            assert pending >= 0
            if code not in self.clawed:
                assert available >= 0 and balance >= 0, (code, got[code])
        assert got[self.revenue][0] >= 0 and got[self.revenue][2] >= 0
        check = self.call("Check", ledger_pb2.CheckRequest())
        _check_ok(check)
        debts = sum(1 for code in self.players if got[code][0] < 0)
        assert check.player_debts >= debts
        if debts:
            event("a player carries a debt")


TestLedgerModel = LedgerMachine.TestCase
TestLedgerModel.settings = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
