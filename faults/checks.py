"""The invariants, checked after each phase and at the end, against what the clients were told.

- The network is whole: every process alive (a dead one is a violation, then started again),
  and the gateway ready.
- The ledger check is clean (`GET /admin/ledger/check`: balances sum to zero, no constrained
  account below zero, no unbalanced transaction, no drift).
- Exactly once, from the ledger's own entries (`GET /api/ledger/entries`, read incrementally):
  each acknowledged operation's transaction is there once, with its amount on its player
  (`lost` when not); no transaction moves a player's money that no acknowledged operation
  explains (`doubled`); every wallet equals its acknowledged credits minus debits.
- Replaying an acknowledged request answers the same (`replay_mismatches`).
- Each hosted checkout session reads completed iff one of its orders is paid, with the order and
  transaction the client was told, charged once (`sessions`, `faults.checkout`).
- Each refunded order holds the refunds the operator was told, debiting the pro-rata currency,
  refunded iff wholly, one processor refund per succeeded refund (`refunds`, `faults.refunds`).
- Each transfer reads as the client was told (completed, cancelled or open; none left claiming
  or returning once the sweep had its time), its hold and its settlement or return each once in
  the ledger, and no transfer transaction that no transfer names (`transfers`,
  `faults.transfer_checks`).
- Each payout reads as the client was told or further along (none left approved or processing
  once the sweep had its time), ends as its plan and the simulator's account number say, is at
  most one payment order at the ACH provider, and each payout tenant's revenue is its earnings
  less what completed and was not returned less what is held (`payouts`, `faults.payout_checks`).
- The processor's record and the webhooks are checked in `faults.evidence`.

Each finding is reported once, in the check that first saw it: a phase's row counts what it broke.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from devstack.stack import Stack
from faults import checkout, evidence, payout_checks, refunds, subscription_checks, transfer_checks, transfers
from faults.client import Stats
from faults.flows import ORDER, World, body_of
from faults.model import ABANDONED, ACKED, REFUSED, Op, minor
from faults.phases import blocking
from faults.receivers import Receivers

ENTRIES_PAGE = 1000
ENTRIES_PAGES_MAX = 10_000  # ten million entries: beyond any run
BALANCES_BATCH = 1000  # the API's most per request
LOG_TAIL_LINES = 5


@dataclasses.dataclass
class Findings:
    """One check's new findings; `violations` is the count that fails the run."""

    ledger: dict[str, Any] = dataclasses.field(default_factory=dict)
    dead: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unresolved: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    lost: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    doubled: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    wallets: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    replays: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    replayed: int = 0
    sessions: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # checkout sessions gone wrong
    sessions_checked: int = 0
    refunds: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # refunded orders gone wrong
    refunds_checked: int = 0
    transfers: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # transfers gone wrong
    transfers_checked: int = 0
    payouts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # payouts (or revenues) gone wrong
    payouts_checked: int = 0
    subscriptions: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # charged more than once a period
    subscriptions_checked: int = 0
    subscription_renewals: int = 0  # renewals found in the ledger so far (each in the model)
    processor: dict[str, Any] = dataclasses.field(default_factory=dict)
    webhooks: dict[str, Any] = dataclasses.field(default_factory=dict)
    abandoned: int = 0
    settled_late: int = 0
    check_s: float = 0.0

    @property
    def violations(self) -> int:
        return (
            (0 if self.ledger.get("ok") else 1)
            + len(self.dead)
            + len(self.unresolved)
            + len(self.lost)
            + len(self.doubled)
            + len(self.wallets)
            + len(self.replays)
            + len(self.sessions)
            + len(self.refunds)
            + len(self.transfers)
            + len(self.payouts)
            + len(self.subscriptions)
            + int(self.processor.get("violations", 0))
            + int(self.webhooks.get("violations", 0))
        )

    def summary(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "violations": self.violations}


class Checker:
    def __init__(self, world: World, receivers: Receivers, stack: Stack, *, replay_max: int) -> None:
        self.world = world
        self.receivers = receivers
        self.stack = stack
        self.replay_max = replay_max
        self.stats = Stats("checks")
        self.cursors: dict[int, str] = {}
        # (tenant, transaction_id) -> {player_email: amount moved on that player's wallet}
        self.player_txns: dict[tuple[int, str], dict[str, int]] = {}
        self.txn_kinds: dict[tuple[int, str], str] = {}  # (tenant, transaction_id) -> kind, of those
        self.reported: set[str] = set()
        self.evidence = evidence.Evidence(world, receivers, self.stats)
        self.payout_checks = payout_checks.PayoutChecks(world, stack.env, self.stats)
        self.processor_restarted_at = 0.0  # time.monotonic() of the simulator's last start by a fault
        # What the supervisor (`Stack.watch_once`, when the runner runs it) reported since the last check.
        self.supervisor_lines: list[str] = []

    def _new(self, kind: str, key: str) -> bool:
        """True the first time a finding is seen: each is reported in one check only."""
        tag = f"{kind}:{key}"
        if tag in self.reported:
            return False
        self.reported.add(tag)
        return True

    async def run(
        self, *, phase_ops: list[Op], deadline_s: float, webhook_bound_s: float, replay_all: bool = False
    ) -> Findings:
        started = time.monotonic()
        deadline = started + deadline_s
        f = Findings()
        f.dead = await self.health(deadline)
        f.settled_late, f.abandoned = await self.resolve_abandoned(deadline)
        f.unresolved = [
            op.summary()
            for op in self.world.model.ops
            if op.outcome == "unresolved" and self._new("unresolved", op.key)
        ]
        f.ledger = await self.ledger_check(deadline)
        await self.read_entries(deadline)
        # Before exactly_once: the renewals it finds become operations of the model.
        f.subscriptions_checked, f.subscriptions = await self.checked_subscriptions(deadline)
        f.subscription_renewals = sum(op.flow == subscription_checks.RENEWAL_FLOW for op in self.world.model.ops)
        f.lost, f.doubled = self.exactly_once()
        f.wallets = await self.wallets(deadline)
        ops = self.world.model.ops if replay_all else phase_ops
        f.replayed, f.replays = await self.replays(ops, deadline)
        f.processor = await self.evidence.charges(deadline, self.processor_restarted_at, self._new)
        f.sessions_checked, f.sessions = await self.sessions(ops, deadline)
        f.refunds_checked, f.refunds = await self.refunded_orders(ops, deadline)
        f.transfers_checked, f.transfers = await self.checked_transfers(ops, deadline)
        # Before the webhooks: it promises each transition the payouts made.
        f.payouts_checked, f.payouts = await self.checked_payouts(ops, deadline)
        f.webhooks = await self.evidence.webhooks(webhook_bound_s, self._new)
        f.check_s = round(time.monotonic() - started, 2)
        return f

    async def health(self, deadline: float) -> list[dict[str, Any]]:
        """Processes that died on their own (each a violation: the faults restart what they kill),
        whether the supervisor restarted them already or they are started again here."""
        lines, self.supervisor_lines = self.supervisor_lines, []
        dead: list[dict[str, Any]] = [
            {"process": line.partition(" ")[0], "supervisor": line[:500]}
            for line in lines
            if " died (" in line or "did not serve within" in line
        ]
        for name, code in self.stack.dead():
            if not any(d["process"] == name for d in dead):  # one the supervisor reported, not restarted yet
                tail = self.stack.log_tail(name, LOG_TAIL_LINES)
                dead.append({"process": name, "exit_code": code, "log_tail": tail[-2000:]})
            await blocking(self.stack.restart, name)
        for label, server in self.stack.servers().items():
            if server.proc is not None and server.proc.poll() is not None:
                dead.append({"process": label, "exit_code": server.proc.returncode, "log_tail": ""})
                await blocking(self.stack.restart_server, label)
        answer = await self.world.gateway.until_definite("GET", "/readyz", deadline=deadline, stats=self.stats)
        if answer.status != 200:
            dead.append({"process": "gateway", "exit_code": None, "log_tail": f"/readyz answered {answer.status}"})
        return dead

    async def resolve_abandoned(self, deadline: float) -> tuple[int, int]:
        """A 3-D Secure purchase left open may have settled since (the processor's webhook): the
        partner reconciles it from order-details, the authoritative read. A transfer's claim or
        cancel left in flight is read again once the sweep had its time."""
        late = still = 0
        until = min(deadline, time.monotonic() + transfer_checks.SWEEP_WAIT_S)
        for op in self.world.model.ops:
            if op.outcome == ABANDONED and op.transfer_id:
                outcome = await transfers.resolve(self.world, op, until, self.stats)
                late, still = late + (outcome == ACKED), still + (outcome == ABANDONED)
                continue
            if op.outcome == ABANDONED and op.session_id:  # a checkout session: the page's view says
                outcome = await checkout.resolve(self.world, op, deadline, self.stats)
                late, still = late + (outcome == ACKED), still + (outcome == ABANDONED)
                continue
            if op.outcome != ABANDONED or not op.order_id:
                continue
            tenant = self.world.tenants[op.tenant]
            answer = await self.world.gateway.until_definite(
                "GET", ORDER, key=tenant.sdk_key, params={"order_id": op.order_id}, deadline=deadline, stats=self.stats
            )
            b = body_of(answer)
            if answer.status == 200 and b.get("status") == "completed" and b.get("transaction_id"):
                op.outcome, op.transaction_id = ACKED, str(b["transaction_id"])
                op.delta_minor = minor(b.get("currency_amount", "0"))
                op.events, op.allowed_events = [("purchase.completed", op.order_id)], []
                op.note += "; settled after the client gave up (order-details)"
                late += 1
            elif answer.status == 200 and b.get("status") in ("failed", "cancelled"):
                op.outcome = REFUSED
                op.events, op.allowed_events = [("purchase.failed", op.order_id)], []
            else:
                still += 1
        return late, still

    async def ledger_check(self, deadline: float) -> dict[str, Any]:
        answer = await self.world.gateway.until_definite(
            "GET", "/admin/ledger/check", admin=True, deadline=deadline, stats=self.stats
        )
        b = body_of(answer)
        ok = answer.status == 200 and b.get("ok") is True and b.get("total_balance") == "0"
        out = {"ok": ok, "status": answer.status, "total_balance": b.get("total_balance")}
        if not ok:
            out["detail"] = {k: b.get(k) for k in ("negative_accounts", "unbalanced_transactions", "drifted_accounts")}
        return out

    async def read_entries(self, deadline: float) -> None:
        """Each tenant's new entries since the last check (entries are append-only)."""
        for tenant in self.world.tenants:
            cursor = self.cursors.get(tenant.index, "")
            for _ in range(ENTRIES_PAGES_MAX):
                params = {"limit": str(ENTRIES_PAGE)}
                if cursor:
                    params["cursor"] = cursor
                answer = await self.world.gateway.until_definite(
                    "GET", "/api/ledger/entries", key=tenant.sdk_key, params=params, deadline=deadline, stats=self.stats
                )
                b = body_of(answer)
                if answer.status != 200:
                    raise RuntimeError(f"ledger entries of tenant {tenant.index}: {answer.status} {answer.body!r:.300}")
                for e in b.get("data") or []:
                    if e.get("account") == "player":
                        moved = self.player_txns.setdefault((tenant.index, str(e["transaction_id"])), {})
                        email = str(e["player_email"])
                        moved[email] = moved.get(email, 0) + minor(e["amount"])
                        self.txn_kinds[(tenant.index, str(e["transaction_id"]))] = str(e.get("kind") or "")
                cursor = str(b.get("next_cursor") or cursor)
                if not b.get("has_more"):
                    break
            self.cursors[tenant.index] = cursor

    def exactly_once(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        lost: list[dict[str, Any]] = []
        doubled: list[dict[str, Any]] = []
        explained: set[tuple[int, str]] = set()
        for op in self.world.model.acked():
            if op.payout_id:
                continue  # a payout's request and review move no wallet (`faults.payout_checks`)
            explained.add((op.tenant, op.transaction_id))
            moved = self.player_txns.get((op.tenant, op.transaction_id), {}).get(op.player)
            if moved != op.delta_minor and self._new("lost", op.key):
                lost.append({**op.summary(), "ledger_moved_minor": moved})
        for (tenant, txn), players in self.player_txns.items():
            if (tenant, txn) not in explained and self._new("doubled", f"{tenant}:{txn}"):
                doubled.append({"tenant": tenant, "transaction_id": txn, "moved_minor": players})
        return lost, doubled

    async def wallets(self, deadline: float) -> list[dict[str, Any]]:
        expected = self.world.model.expected_balances()
        out = []
        for tenant in self.world.tenants:
            for i in range(0, len(tenant.players), BALANCES_BATCH):
                emails = tenant.players[i : i + BALANCES_BATCH]
                answer = await self.world.gateway.until_definite(
                    "POST",
                    "/api/players/balances",
                    key=tenant.sdk_key,
                    body={"player_emails": emails},
                    deadline=deadline,
                    stats=self.stats,
                )
                if answer.status != 200:
                    raise RuntimeError(f"balances of tenant {tenant.index}: {answer.status} {answer.body!r:.300}")
                for row in body_of(answer).get("balances") or []:
                    email = str(row["player_email"])
                    want, have = expected.get((tenant.index, email), 0), minor(row["balance"])
                    if want != have and self._new("wallet", f"{tenant.index}:{email}:{have}"):
                        out.append({"tenant": tenant.index, "player": email, "expected_minor": want, "minor": have})
        return out

    async def replays(self, ops: list[Op], deadline: float) -> tuple[int, list[dict[str, Any]]]:
        """Replay the acknowledged requests: first those that were retried (the interesting ones),
        then a random sample, `replay_max` in all."""
        candidates = [op for op in ops if op.replay is not None and op.outcome in (ACKED, REFUSED)]
        retried = [op for op in candidates if op.indefinite]
        rest = [op for op in candidates if not op.indefinite]
        self.world.rng.shuffle(rest)
        chosen = (retried + rest)[: self.replay_max]
        mismatches = []
        for op in chosen:
            r = op.replay
            if r is None:
                continue
            tenant = self.world.tenants[r.tenant]
            answer = await self.world.gateway.until_definite(
                r.method,
                r.path,
                key=None if r.admin or r.headers else tenant.sdk_key,
                headers=r.headers,
                admin=r.admin,
                body=r.body,
                deadline=deadline,
                stats=self.stats,
            )
            b = body_of(answer)
            wrong = {k: b.get(k) for k, v in r.fields.items() if b.get(k) != v}
            if (answer.status != r.status or wrong) and self._new("replay", op.key):
                mismatches.append({**op.summary(), "replay_status": answer.status, "replay_differs": wrong})
        return len(chosen), mismatches

    async def sessions(self, ops: list[Op], deadline: float) -> tuple[int, list[dict[str, Any]]]:
        """Every checkout session of these operations against its orders and the processor's charges."""
        checked, wrong = await checkout.check_sessions(self.world, ops, self.evidence.intents, deadline, self.stats)
        return checked, [w for w in wrong if self._new("session", str(w["session_id"]))]

    async def checked_transfers(self, ops: list[Op], deadline: float) -> tuple[int, list[dict[str, Any]]]:
        """Every transfer these operations made against the client's story and the ledger; and the
        ledger's transfer transactions that no transfer names."""
        checked, wrong = await transfer_checks.check_transfers(
            self.world, ops, self.player_txns, self.txn_kinds, deadline, self.stats
        )
        return checked, [w for w in wrong if self._new("transfer", w["transfer_id"] or w["transaction_id"])]

    async def checked_payouts(self, ops: list[Op], deadline: float) -> tuple[int, list[dict[str, Any]]]:
        """Every payout these operations touched against the client's story and the ACH provider;
        and the revenue of each tenant with payouts."""
        checked, wrong = await self.payout_checks.check(ops, deadline)

        def tag(w: dict[str, Any]) -> str:
            return str(w["payout_id"]) or f"revenue:{w['tenant']}:{sorted(w['revenue_minor'].items())}"

        return checked, [w for w in wrong if self._new("payout", tag(w))]

    async def checked_subscriptions(self, deadline: float) -> tuple[int, list[dict[str, Any]]]:
        """Every subscription made so far: at most one charge a period, each renewal in the model."""
        checked, wrong = await subscription_checks.check_subscriptions(
            self.world, self.player_txns, self.txn_kinds, self.read_entries, deadline, self.stats
        )
        return checked, [w for w in wrong if self._new("subscription", str(w["subscription_id"]))]

    async def refunded_orders(self, ops: list[Op], deadline: float) -> tuple[int, list[dict[str, Any]]]:
        """Every order these operations refunded against the model and the processor's refunds."""
        if not any(op.refund_of for op in ops):
            return 0, []
        try:
            made = await self.world.processor.refunds(deadline=deadline, stats=self.stats)
        except RuntimeError as exc:
            return 0, [{"order_id": "", "problems": [str(exc)]}]
        checked, wrong = await refunds.check_refunds(self.world, ops, made, deadline, self.stats)
        return checked, [w for w in wrong if self._new("refund", str(w["order_id"]))]
