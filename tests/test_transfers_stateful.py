"""Transfers against a model: a hypothesis state machine mixes, across three tenants (transfer fee
3.5, 5 and 6.5%) and two funded players in each, self-transfers and sends (amounts in tenths of a
unit, some beyond the balance, some all of it), right and wrong PINs (up to the lock), resends,
claims (by the right tenant, a wrong one, twice), cancels and expiries (a deadline moved into the
past, then the service's sweep) against the real stack. After every step the ledger check is clean
and every wallet, transfer status and fee_breakdown (parts adding up to exactly 10% of the amount)
equals the model's; at the end whatever is open expires, and then nothing is held. The fee rule is
written out here, not imported from the product."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devstack.stack import Stack
from services.common import money
from tests import transfers_support as ts
from tests.helpers import Api, assert_envelope, eventually

T = TypeVar("T")

FEE_PERCENTAGES = ("3.5", "5", "6.5")
SOURCE_BPS = (350, 500, 650)
DESTINATION_BPS = 350
PLAYERS = 2  # per tenant; player j has the same email in every tenant (the same human)
PIN_TRIES, PIN_SENDS = 5, 3
OPEN = ("pending_verification", "claimable")
UNFINISHED = ("pending_verification", "claimable", "claiming", "returning")
WAIT_S = 20.0
AREAS = ("415", "212", "312", "617", "206", "303", "512", "404")
INDEX, OFFSET, PLAYER, TENANT = st.integers(0, 63), st.integers(1, 2), st.integers(0, PLAYERS - 1), st.integers(0, 2)
FUNDS = st.lists(st.integers(50, 300), min_size=3 * PLAYERS, max_size=3 * PLAYERS)  # whole units

_STACK: list[Stack] = []


@pytest.fixture(autouse=True)
def _transfers_stack(stack: Stack) -> None:
    _STACK[:] = [stack]


def phone() -> str:
    """A valid US number of this run's own, as ts.phone makes them but from `secrets`: hypothesis
    seeds `random` the same way in every run, and the texts per phone number are limited."""
    exchange = 200 + secrets.randbelow(800)
    exchange += 1 if exchange % 100 == 11 else 0
    return f"+1{secrets.choice(AREAS)}{exchange}{secrets.randbelow(10_000):04d}"


units = money.format_units


def fee_of(amount: int, source_bps: int) -> dict[str, str]:
    """The contract: 10% on top, each share rounded down, the network the rest (minor units)."""
    total = amount // 10
    source, destination = amount * source_bps // 10_000, amount * DESTINATION_BPS // 10_000
    shares = {"source_tenant": source, "destination_tenant": destination, "network": total - source - destination}
    return {k: units(v) for k, v in {**shares, "total": total}.items()}


@dataclasses.dataclass
class Transfer:
    transfer_id: str
    kind: str  # self_transfer | send
    src: int
    sender: int  # player index (in the source tenant)
    amount: int  # minor units
    sender_phone: str
    recipient_phone: str | None
    sender_balance: int  # the sender's balance after the hold, then after a return
    dst: int | None  # a self-transfer's from the start, a send's once claimed
    status: str = "pending_verification"
    end_reason: str | None = None
    pin: str | None = None  # the newest PIN, once read from the sender's phone
    pin_attempts: int = 0
    pin_sends: int = 1
    code: str | None = None
    recipient: int | None = None
    recipient_balance: int | None = None

    @property
    def held(self) -> int:
        return self.amount + self.amount // 10


# What a step past its time answers, by the transfer's status.
ENDED_CODES = {
    "completed": (409, "TRANSFER_ALREADY_CLAIMED"),
    "cancelled": (409, "TRANSFER_CANCELLED"),
    "expired": (410, "TRANSFER_EXPIRED"),
    "claimable": (409, "TRANSFER_NOT_AWAITING_PIN"),
}


class TransfersMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.stack = _STACK[0]
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.api = Api(self.stack.gateway_url, admin_token=self.stack.env["INVO_ADMIN_TOKEN"])
        self.run(self.api.__aenter__())
        self.tenants: list[dict[str, Any]] = []
        self.emails: list[str] = []
        self.funded: dict[tuple[int, int], int] = {}
        self.wallets: dict[tuple[int, int], int] = {}
        self.transfers: list[Transfer] = []

    def run(self, aw: Awaitable[T]) -> T:
        return self.loop.run_until_complete(aw)

    def teardown(self) -> None:
        try:
            if self.tenants:
                self.expire_the_rest()
        finally:
            try:
                self.run(self.api.__aexit__(None, None, None))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()
        assert not self.loop_errors, [f"{c.get('message')}: {c.get('exception')!r}" for c in self.loop_errors]

    # -- helpers ------------------------------------------------------------------------------

    def pick(self, i: int, eligible: list[Transfer]) -> Transfer:
        return eligible[i % len(eligible)]

    def pin(self, t: Transfer) -> str:
        if t.pin is None:
            t.pin = self.run(ts.pin_of(self.api, t.sender_phone, after=t.pin_sends - 1))
        return t.pin

    def other(self, tenant: int, offset: int) -> int:
        return (tenant + offset) % len(self.tenants)

    def returned(self, t: Transfer, status: str, reason: str) -> None:
        self.wallets[(t.src, t.sender)] += t.held
        t.sender_balance = self.wallets[(t.src, t.sender)]
        t.status, t.end_reason, t.pin = status, reason, None

    def settled(self, t: Transfer) -> None:
        """The row's final status, once a worker finished it (a sweep may be finishing it now)."""

        async def final() -> dict[str, Any]:
            got = await ts.get(self.api, self.tenants[t.src], t.transfer_id)
            assert got.status == 200, got
            return dict(got.body) if got.body["status"] not in ("claiming", "returning") else {}

        body = self.run(eventually(final, timeout_s=WAIT_S))
        assert (body["status"], body["end_reason"]) == (t.status, t.end_reason), (body, t)

    def check(self, resp: Any, t: Transfer, role: str = "source") -> None:
        """A transfer answer against the model."""
        body = resp.body
        assert body["transfer_id"] == t.transfer_id and body["role"] == role, (body, t)
        assert (body["status"], body["end_reason"]) == (t.status, t.end_reason), (body, t)
        assert body["amount"] == units(t.amount) and body["fee_breakdown"] == fee_of(t.amount, SOURCE_BPS[t.src])
        shown = t.sender_balance if role == "source" else t.recipient_balance
        assert body["new_balance"] == (None if shown is None else units(shown)), (body, t)

    # -- setting up ---------------------------------------------------------------------------

    @initialize(funds=FUNDS, src=TENANT, offset=OFFSET, send=st.booleans(), tenths=st.integers(1, 400))
    def open_network(self, funds: list[int], src: int, offset: int, send: bool, tenths: int) -> None:
        for pct in FEE_PERCENTAGES:
            t = self.run(self.api.create_tenant(name=f"Stateful {pct}%", transfer_fee_percentage=pct))
            assert t["tenant"]["transfer_fee_percentage"] == pct, t
            self.tenants.append(t)
        suffix = secrets.token_hex(4)
        self.emails = [f"trf.model-{suffix}-{j}@example.com" for j in range(PLAYERS)]
        for n, whole in enumerate(funds):
            w = divmod(n, PLAYERS)
            self.run(ts.fund(self.api, self.tenants[w[0]], self.emails[w[1]], str(whole)))
            self.funded[w] = self.wallets[w] = whole * 100
        # A claimable transfer and one waiting for its PIN, one of each kind, from the start (each
        # at most 44 of a player's 50 units): with nothing to act on most rules are disabled, and
        # hypothesis would spend its few examples on initiations.
        self.initiate(src, offset, send, 0, "any", tenths)
        self.verify(0)
        self.initiate(src, offset, not send, 1, "any", tenths)

    # -- initiations --------------------------------------------------------------------------

    @rule(
        src=TENANT,
        offset=OFFSET,
        send=st.booleans(),
        sender=PLAYER,
        size=st.sampled_from(["any", "any", "any", "all", "over"]),
        tenths=st.integers(1, 2500),
    )
    def initiate(self, src: int, offset: int, send: bool, sender: int, size: str, tenths: int) -> None:
        balance = self.wallets[(src, sender)]
        # Amount + 10% is 11 tenths of a unit per tenth of the amount, i.e. 11 * tenths minor.
        tenths = {"any": tenths, "all": max(1, balance // 11), "over": balance // 11 + 1}[size]
        amount = tenths * 10
        source, dst = self.tenants[src], self.other(src, offset)
        sender_phone, recipient_phone = phone(), phone()
        email = self.emails[sender]
        if send:
            resp = self.run(ts.initiate_send(self.api, source, email, units(amount), sender_phone, recipient_phone))
        else:
            resp = self.run(
                ts.initiate_transfer(self.api, source, self.tenants[dst], email, units(amount), sender_phone)
            )
        if amount + tenths > balance:
            assert_envelope(resp, 402, "INSUFFICIENT_BALANCE")
            event("initiation refused: insufficient")
            return
        assert resp.status == 201 and resp.body["duplicate"] is False, (resp, balance)
        self.wallets[(src, sender)] = balance - amount - tenths
        kind, left = "send" if send else "self_transfer", self.wallets[(src, sender)]
        t = Transfer(resp.body["transfer_id"], kind, src, sender, amount, sender_phone, None, left, dst)
        if send:
            t.recipient_phone, t.dst = recipient_phone, None
        self.check(resp, t)
        assert resp.body["total_debited"] == units(t.held), resp
        self.transfers.append(t)
        event(f"initiated: {t.kind}" + (", all of the balance" if left == 0 else ""))

    # -- the PIN ------------------------------------------------------------------------------

    @precondition(lambda self: any(t.status == "pending_verification" for t in self.transfers))
    @rule(i=INDEX)
    def verify(self, i: int) -> None:
        t = self.pick(i, [t for t in self.transfers if t.status == "pending_verification"])
        resp = self.run(ts.verify(self.api, self.tenants[t.src], t.transfer_id, self.pin(t)))
        assert resp.status == 200, (resp, t)
        t.status, t.pin = "claimable", None
        self.check(resp, t)
        if t.kind == "self_transfer":
            t.code = resp.body["claim_code"]
            assert t.code and t.code == self.run(ts.code_of(self.api, t.sender_phone)), resp
        else:
            assert resp.body["claim_code"] is None, resp
            assert t.recipient_phone is not None
            t.code = self.run(ts.code_of(self.api, t.recipient_phone))
        event("verified")

    @precondition(lambda self: any(t.status != "pending_verification" for t in self.transfers))
    @rule(i=INDEX, resend=st.booleans())
    def pin_too_late(self, i: int, resend: bool) -> None:
        """A PIN (or a new one) for a transfer past that step."""
        t = self.pick(i, [t for t in self.transfers if t.status != "pending_verification"])
        tenant = self.tenants[t.src]
        if resend:
            assert_envelope(self.run(ts.resend(self.api, tenant, t.transfer_id)), *ENDED_CODES[t.status])
        else:
            assert_envelope(self.run(ts.verify(self.api, tenant, t.transfer_id, "0" * 6)), *ENDED_CODES[t.status])
        event(f"{'resend' if resend else 'verify'} refused: {t.status}")

    @precondition(lambda self: any(t.status == "pending_verification" for t in self.transfers))
    @rule(i=INDEX, wrong=st.integers(1, PIN_TRIES))
    def wrong_pins(self, i: int, wrong: int) -> None:
        t = self.pick(i, [t for t in self.transfers if t.status == "pending_verification"])
        bad = f"{(int(self.pin(t)) + 1) % 1_000_000:06d}"
        for _ in range(wrong):
            resp = self.run(ts.verify(self.api, self.tenants[t.src], t.transfer_id, bad))
            t.pin_attempts += 1
            if t.pin_attempts == PIN_TRIES:
                assert_envelope(resp, 403, "PIN_LOCKED")
                self.returned(t, "cancelled", "pin_locked")
                self.settled(t)
                event("PIN locked")
                return
            assert_envelope(resp, 400, "INCORRECT_PIN")
            assert resp.body["attempts_remaining"] == PIN_TRIES - t.pin_attempts, (resp, t)
        event("wrong PINs")

    @precondition(lambda self: any(t.status == "pending_verification" for t in self.transfers))
    @rule(i=INDEX, waited=st.booleans())
    def resend(self, i: int, waited: bool) -> None:
        t = self.pick(i, [t for t in self.transfers if t.status == "pending_verification"])
        # The cool-down counts from the last PIN text: 31 s ago, or right now.
        self.run(ts.shift(self.stack, t.transfer_id, "pin_sent_at", seconds=31 if waited else 0))
        resp = self.run(ts.resend(self.api, self.tenants[t.src], t.transfer_id))
        if t.pin_sends >= PIN_SENDS:
            assert_envelope(resp, 409, "PIN_SEND_LIMIT_REACHED")
            event("resend refused: limit")
        elif not waited:
            assert_envelope(resp, 429, "PIN_RESEND_TOO_SOON")
            assert int(resp.headers["Retry-After"]) >= 1, resp.headers
            event("resend refused: too soon")
        else:
            assert resp.status == 200, (resp, t)
            t.pin_sends, t.pin = t.pin_sends + 1, None
            self.check(resp, t)
            assert resp.body["pin_sends_remaining"] == PIN_SENDS - t.pin_sends, (resp, t)
            event("resent")

    # -- claims -------------------------------------------------------------------------------

    @precondition(lambda self: any(t.code for t in self.transfers))
    @rule(i=INDEX, who=st.sampled_from(["right", "right", "wrong", "again"]), offset=OFFSET, player=PLAYER)
    def claim(self, i: int, who: str, offset: int, player: int) -> None:
        t = self.pick(i, [t for t in self.transfers if t.code])
        assert t.code is not None
        send = t.kind == "send"
        if who == "again" and t.status == "completed":
            assert t.dst is not None and t.recipient is not None
            tenant, player = t.dst, t.recipient
        elif who == "wrong":  # a self-transfer's other tenants; a send's own source
            tenant = self.other(t.dst if t.dst is not None and not send else t.src, 0 if send else offset)
        else:
            tenant = t.dst if t.dst is not None and not send else self.other(t.src, offset)
        resp = self.run(ts.claim(self.api, self.tenants[tenant], t.code, self.emails[player], send=send))
        same = (tenant, player) == (t.dst, t.recipient)
        if not send and tenant != t.dst:
            assert_envelope(resp, 403, "NOT_TRANSFER_DESTINATION")
            event("claim refused: not the destination")
        elif t.status == "completed" and same:
            assert resp.status == 200 and resp.body["duplicate"] is True, (resp, t)
            self.check(resp, t, "destination")
            event("claim replayed")
        elif t.status != "claimable":
            assert_envelope(resp, *ENDED_CODES[t.status])
            event(f"claim refused: {t.status}")
        elif tenant == t.src:
            assert_envelope(resp, 403, "SAME_TENANT")
            event("claim refused: a send's own source")
        else:
            assert resp.status == 200 and resp.body["duplicate"] is False, (resp, t)
            self.wallets[(tenant, player)] += t.amount
            t.status, t.dst, t.recipient = "completed", tenant, player
            t.recipient_balance = self.wallets[(tenant, player)]
            self.check(resp, t, "destination")
            event(f"claimed: {t.kind}")

    # -- ends ---------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.transfers))
    @rule(i=INDEX, by_source=st.sampled_from([True, True, False]), offset=OFFSET)
    def cancel(self, i: int, by_source: bool, offset: int) -> None:
        t = self.pick(i, self.transfers)
        tenant = t.src if by_source else self.other(t.src, offset)
        resp = self.run(ts.cancel(self.api, self.tenants[tenant], t.transfer_id))
        if tenant != t.src:
            if tenant == t.dst:
                assert_envelope(resp, 403, "NOT_TRANSFER_SOURCE")
            else:
                assert_envelope(resp, 404, "TRANSFER_NOT_FOUND")
            event("cancel refused: not the source")
        elif t.status in OPEN:
            assert resp.status == 200 and resp.body["duplicate"] is False, (resp, t)
            self.returned(t, "cancelled", "cancelled_by_tenant")
            self.check(resp, t)
            event(f"cancelled: {t.kind}")
        elif t.end_reason == "cancelled_by_tenant":
            assert resp.status == 200 and resp.body["duplicate"] is True, (resp, t)
            self.check(resp, t)
            event("cancel replayed")
        else:
            assert_envelope(resp, *ENDED_CODES[t.status])
            event(f"cancel refused: {t.end_reason or t.status}")

    def expire(self, t: Transfer) -> None:
        """Move the open transfer's deadline into the past (the model's, not yet the sweep's)."""
        if t.status == "pending_verification":
            self.run(ts.shift(self.stack, t.transfer_id, "verify_by", "pin_expires_at"))
            self.returned(t, "expired", "verification_expired")
        else:
            self.run(ts.shift(self.stack, t.transfer_id, "claim_expires_at"))
            self.returned(t, "expired", "claim_expired")

    @precondition(lambda self: any(t.status in OPEN for t in self.transfers))
    @rule(i=INDEX, claim_first=st.booleans(), offset=OFFSET)
    def expiry(self, i: int, claim_first: bool, offset: int) -> None:
        t = self.pick(i, [t for t in self.transfers if t.status in OPEN])
        code, claimable = t.code, t.status == "claimable"
        self.expire(t)
        if claimable and claim_first and code:
            # Past the deadline, before (or while) a sweep returns it: the code no longer works.
            tenant = t.dst if t.kind == "self_transfer" and t.dst is not None else self.other(t.src, offset)
            resp = self.run(ts.claim(self.api, self.tenants[tenant], code, ts.email(), send=t.kind == "send"))
            assert resp.status == 410 and resp.body["error_code"] in ("CLAIM_CODE_EXPIRED", "TRANSFER_EXPIRED"), resp
            event(f"claim refused: {resp.body['error_code']}")
        self.run(ts.sweep(self.stack))
        self.settled(t)
        event(f"expired: {t.end_reason}")

    # -- after every step ---------------------------------------------------------------------

    @invariant()
    def the_world_matches_the_model(self) -> None:
        if not self.tenants:
            return
        self.run(ts.check_ledger(self.api))
        for (n, player), minor in self.wallets.items():
            got = self.run(ts.balance(self.api, self.tenants[n], self.emails[player]))
            assert got == units(minor), ((n, player), got, minor)
        for n, tenant in enumerate(self.tenants):
            resp = self.run(self.api.get("/api/transfers?role=source&limit=100", key=tenant["sdk_key"]))
            assert resp.status == 200, resp
            listed = {b["transfer_id"]: b for b in resp.body["data"]}
            mine = {t.transfer_id: t for t in self.transfers if t.src == n}
            assert set(listed) == set(mine), (listed.keys(), mine.keys())
            for tid, body in listed.items():
                t = mine[tid]
                assert (body["status"], body["end_reason"], body["type"]) == (t.status, t.end_reason, t.kind), body
                assert body["amount"] == units(t.amount), body
                fee = body["fee_breakdown"]
                parts = sum(Decimal(fee[k]) for k in ("source_tenant", "destination_tenant", "network"))
                assert parts == Decimal(fee["total"]) and Decimal(fee["total"]) * 10 == Decimal(body["amount"]), body
                assert fee == fee_of(t.amount, SOURCE_BPS[n]), (body, t)
                dst = self.tenants[t.dst]["tenant_id"] if t.dst is not None else None
                assert body["destination_tenant_id"] == dst, (body, t)

    # -- the end ------------------------------------------------------------------------------

    def expire_the_rest(self) -> None:
        """Whatever is still open expires; then nothing is held anywhere."""
        left = [t for t in self.transfers if t.status in OPEN]
        for t in left:
            self.expire(t)
        if left:
            self.run(ts.sweep(self.stack))
        for t in left:
            self.settled(t)
        self.the_world_matches_the_model()
        for w, funded in self.funded.items():
            sent = sum(t.held for t in self.transfers if (t.src, t.sender) == w and t.status == "completed")
            got = sum(t.amount for t in self.transfers if (t.dst, t.recipient) == w and t.status == "completed")
            assert self.wallets[w] == funded - sent + got, (w, self.wallets[w], funded, sent, got)
        for tenant in self.tenants:
            for status in UNFINISHED:
                resp = self.run(self.api.get(f"/api/transfers?status={status}", key=tenant["sdk_key"]))
                assert resp.status == 200 and resp.body["data"] == [], (status, resp)
        assert all(t.status in ("completed", "cancelled", "expired") for t in self.transfers)


TestTransfersModel = TransfersMachine.TestCase
TestTransfersModel.settings = settings(
    max_examples=20,
    stateful_step_count=20,
    derandomize=True,  # the same runs every time, in CI too
    database=None,
    deadline=None,
    # A failure is reported with the steps that found it: shrinking and explaining it against the
    # real stack would take longer than the suite's timeout.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
