"""What the clients were told: every operation, its definite answer, and what that answer promises.

An acknowledged operation (a 2xx) promises its effect on one wallet (`delta_minor`, under its
`transaction_id`; an operator's refund of an order is an operation of its own, debiting what the
pro-rata rule gives; a transfer is its hold, then its claim or its cancel, each an operation on the
wallet it moves; a payout is its request, then its review or cancel, moving no wallet: its effect is on
the tenant's revenue) and the webhook events that announce it; a refused one (a definite 4xx) promises
no effect, and sometimes an event (a declined card is announced as `purchase.failed`). The checks
compare the network's state with these promises; nothing here talks to the network.
"""

from __future__ import annotations

import dataclasses
import itertools
from decimal import Decimal, InvalidOperation
from typing import Any

# Outcomes of one operation.
ACKED = "acked"  # a 2xx: it took effect, exactly once
REFUSED = "refused"  # a definite 4xx: it took no effect
UNRESOLVED = "unresolved"  # no definite answer before the client's deadline
ABANDONED = "abandoned"  # a flow the client could not finish (a 3-D Secure challenge left open)

# Event types whose arrival means money moved: one for an operation nobody was told about is a violation.
MONEY_EVENTS = frozenset(
    {
        "item.purchased",
        "balance.adjusted",
        "purchase.completed",
        "purchase.refunded",
        "transfer.completed",
        "transfer.cancelled",
        "transfer.expired",
        "payout.status_changed",
        "subscription.created",
        "subscription.renewed",
    }
)


def minor(units: object) -> int:
    """A signed units string ("-0.35", "100") as minor units (1/100 unit), exactly."""
    try:
        value = Decimal(str(units)) * 100
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {units!r}") from exc
    if value != value.to_integral_value():
        raise ValueError(f"more than two decimals: {units!r}")
    return int(value)


def event_key(event_type: str, data: dict[str, Any]) -> str | None:
    """What names the operation an event announces: its transaction, its order (its refund: an
    order may have several), or (for an operator's adjustment, whose event carries neither) the
    adjustment's unique reason; a transfer's, its transfer; a payout's, its payout and the status
    it moved to (each transition is an event of its own, once)."""
    if event_type == "item.purchased":
        return str(data.get("transaction_id") or "") or None
    if event_type == "purchase.refunded":
        return str(data.get("refund_id") or "") or None
    if event_type.startswith("purchase."):
        return str(data.get("order_id") or "") or None
    if event_type == "balance.adjusted":
        return str(data.get("reason") or "") or None
    if event_type.startswith("transfer."):
        return str(data.get("transfer_id") or "") or None
    if event_type.startswith("subscription.") and data.get("subscription_id"):
        period = (data.get("period") or {}).get("number")
        return f"{data['subscription_id']}:{event_type.partition('.')[2]}:{period}"
    if event_type == "payout.status_changed" and data.get("payout_id") and data.get("to"):
        return f"{data['payout_id']}:{data['to']}"
    return None


@dataclasses.dataclass
class Replay:
    """The same request again, and the parts of its answer that must equal the first answer's."""

    method: str
    path: str
    body: dict[str, Any]
    tenant: int
    admin: bool = False
    status: int = 200
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Sent instead of the tenant's SDK key when set: a checkout page's call carries the session's token.
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Op:
    op_id: int
    phase: str
    flow: str
    tenant: int  # index into the workload's tenants
    player: str
    key: str  # the idempotency key or purchase_reference
    outcome: str = UNRESOLVED
    status: int = 0
    error_code: str = ""
    transaction_id: str = ""
    order_id: str = ""  # the order that paid (or the last one tried)
    session_id: str = ""  # a hosted checkout session, whose attempts are orders of their own
    orders: list[str] = dataclasses.field(default_factory=list)  # every order the answers named
    session_token: str = ""  # the page's credential for `session_id` (kept out of the records)
    refund_of: str = ""  # an operator's refund: the order it refunds (not `order_id`, which is the charge's)
    refund_id: str = ""
    usd_cents: int = 0  # a refund's USD, as asked (all that remained, when no amount was sent)
    transfer_id: str = ""  # a cross-tenant transfer: the one this operation started, claimed or cancelled
    payout_id: str = ""  # a partner payout: the one this operation asked for, reviewed or cancelled
    payout_status: str = ""  # the payout's status as this operation's answer told it
    payout_end: str = ""  # the end the client drove the payout to ("completed", "returned R01", ...)
    subscription_id: str = ""  # a subscription this operation created (or whose renewal it records)
    delta_minor: int = 0  # the acknowledged effect on the player's wallet
    events: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (event_type, event_key) promised
    allowed_events: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # may come, need not
    # Promised to another tenant than the operation's (a transfer's end is told to both sides).
    other_events: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)  # (tenant, type, key)
    # Of `events`, those whose moment is not this answer's (a payout's moves by the ACH provider):
    # promised all the same, but not timed from `acked_at`.
    late_events: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    replay: Replay | None = None
    attempts: int = 0
    indefinite: int = 0  # attempts with a 5xx, a timeout or a connection error
    elapsed_s: float = 0.0
    acked_at: float = 0.0  # time.monotonic() of the definite answer
    note: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "phase": self.phase,
            "flow": self.flow,
            "tenant": self.tenant,
            "player": self.player,
            "key": self.key,
            "outcome": self.outcome,
            "status": self.status,
            "error_code": self.error_code,
            "transaction_id": self.transaction_id,
            "order_id": self.order_id,
            "session_id": self.session_id,
            "refund_of": self.refund_of,
            "refund_id": self.refund_id,
            "usd_cents": self.usd_cents,
            "transfer_id": self.transfer_id,
            "payout_id": self.payout_id,
            "subscription_id": self.subscription_id,
            "payout_status": self.payout_status,
            "payout_end": self.payout_end,
            "delta_minor": self.delta_minor,
            "attempts": self.attempts,
            "indefinite": self.indefinite,
            "note": self.note,
        }


class Model:
    """Every operation of the run, in the order they were started."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.ops: list[Op] = []
        self._ids = itertools.count(1)

    def new(self, *, phase: str, flow: str, tenant: int, player: str) -> Op:
        op_id = next(self._ids)
        op = Op(op_id=op_id, phase=phase, flow=flow, tenant=tenant, player=player, key=f"flt-{self.run_id}-{op_id}")
        self.ops.append(op)
        return op

    def acked(self) -> list[Op]:
        return [op for op in self.ops if op.outcome == ACKED]

    def expected_balances(self) -> dict[tuple[int, str], int]:
        """Each wallet: its acknowledged credits (purchases among them) minus its debits (items
        bought, and the currency each acknowledged refund took back)."""
        out: dict[tuple[int, str], int] = {}
        for op in self.acked():
            k = (op.tenant, op.player)
            out[k] = out.get(k, 0) + op.delta_minor
        return out

    def expected_events(self) -> dict[tuple[int, str, str], Op]:
        """(tenant, event_type, event_key) -> the operation that promised it."""
        out: dict[tuple[int, str, str], Op] = {}
        for op in self.ops:
            if op.outcome in (ACKED, REFUSED):
                for etype, ekey in op.events:
                    out[(op.tenant, etype, ekey)] = op
                for tenant, etype, ekey in op.other_events:
                    out[(tenant, etype, ekey)] = op
        return out

    def allowed_events(self) -> set[tuple[int, str, str]]:
        return {(op.tenant, t, k) for op in self.ops for t, k in op.allowed_events}

    def by_order(self) -> dict[str, Op]:
        out = {order_id: op for op in self.ops for order_id in op.orders}
        return out | {op.order_id: op for op in self.ops if op.order_id}

    def refunds(self) -> dict[str, list[Op]]:
        """order_id -> the refunds asked of it, in the order they were asked."""
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            if op.refund_of:
                out.setdefault(op.refund_of, []).append(op)
        return out

    def transfers(self) -> dict[str, list[Op]]:
        """transfer_id -> its operations (the hold first, then its claim or cancels), in order."""
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            if op.transfer_id:
                out.setdefault(op.transfer_id, []).append(op)
        return out

    def payouts(self) -> dict[str, list[Op]]:
        """payout_id -> its operations (the request first, then its review or cancel), in order."""
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            if op.payout_id:
                out.setdefault(op.payout_id, []).append(op)
        return out

    def by_session(self) -> dict[str, Op]:
        return {op.session_id: op for op in self.ops if op.session_id}
