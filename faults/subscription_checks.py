"""The subscriptions' check, after each phase: every subscription the workload created, held to at
most one charge per period against the ledger's own entries (`faults.subscriptions` makes them).

- The subscription is read (`GET /api/subscriptions/{id}`); the ledger's item purchases of its
  subscriber (the only thing that player ever buys) must be exactly `periods_paid` of them, each a
  debit of the price; `periods_paid` never more than the credit paid for (PERIODS_FUNDED), and
  `status` `active` while a period is paid, `past_due` or `cancelled` (`payment_failed`) after.
- A renewal's charge can be in flight when the check reads (the ledger's write lands before the
  subscription records it, and a crashed holder's lease runs out after INVO_RPC_TIMEOUT_S * 2 + 5),
  and a subscription the ticker's last move made due may not be renewed yet: it is read again, with
  the entries, until it is settled (cancelled, or next due after the clock as the ticker left it)
  and agrees, or SETTLE_WAIT_S has passed.
- Each renewal found becomes an operation of the model (flow `subscription_renewal`, the debit
  under its transaction), so the generic checks hold it to exactly once and expect its
  `item.purchased`; its `subscription.renewed` is allowed (the entries do not say which period a
  charge paid), the create's `subscription.created` expected.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from faults.client import Stats
from faults.flows import World, body_of
from faults.model import ACKED, Op
from faults.subscriptions import FLOW, PERIODS_FUNDED, RENEWAL_FLOW, SUBSCRIPTIONS
from faults.transfers import backoff

SETTLE_WAIT_S = 60.0
PlayerTxns = dict[tuple[int, str], dict[str, int]]
TxnKinds = dict[tuple[int, str], str]


Purchases = dict[tuple[int, str], dict[str, int]]  # (tenant, player) -> {transaction: minor moved}


def _purchases(moved: PlayerTxns, kinds: TxnKinds) -> Purchases:
    """Every player's item purchases in the ledger as read so far, indexed once per read (each
    subscriber's are looked up, not searched for among every transaction of the run)."""
    out: Purchases = {}
    for (tenant, txn), players in moved.items():
        if kinds.get((tenant, txn)) == "item_purchase":
            for player, amount in players.items():
                out.setdefault((tenant, player), {})[txn] = amount
    return out


def _problems(op: Op, view: dict[str, Any], charges: dict[str, int]) -> list[str]:
    paid = view.get("periods_paid")
    out = []
    if not isinstance(paid, int) or len(charges) != paid:
        out.append(f"{len(charges)} charges in the ledger for periods_paid {paid}")
    if any(v != op.delta_minor for v in charges.values()):
        out.append(f"charges {sorted(charges.values())} for a price of {-op.delta_minor}")
    if isinstance(paid, int) and paid > PERIODS_FUNDED:
        out.append(f"{paid} periods paid from a credit of {PERIODS_FUNDED}")
    if op.transaction_id not in charges:
        out.append("the create's charge is not in the ledger")
    status, reason = view.get("status"), view.get("cancellation_reason")
    if status == "cancelled" and reason != "payment_failed":
        out.append(f"cancelled ({reason}) though nobody cancelled it")
    if status not in ("active", "past_due", "cancelled"):
        out.append(f"status {status}")
    return out


def _settled(view: dict[str, Any], world: World) -> bool:
    """Nothing more will happen to it until the clock moves again: cancelled, or due after it."""
    if world.subscription_clock is None or view.get("status") == "cancelled":
        return True
    due = view.get("next_attempt_at")
    clock = world.subscription_clock.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return isinstance(due, str) and due > clock  # both UTC in one format: text order is time order


async def check_subscriptions(
    world: World,
    moved: PlayerTxns,
    kinds: TxnKinds,
    reread: Callable[[float], Awaitable[None]],
    deadline: float,
    stats: Stats,
) -> tuple[int, list[dict[str, Any]]]:
    """Every subscription created so far (renewals happen in any phase), against the ledger; the
    renewals found are added to the model. `reread` reads the ledger's new entries into `moved`."""
    creates = [op for op in world.model.ops if op.flow == FLOW and op.outcome == ACKED and op.subscription_id]
    known = {op.transaction_id for op in world.model.ops if op.flow in (FLOW, RENEWAL_FLOW)}
    until = min(deadline, time.monotonic() + SETTLE_WAIT_S)
    wrong: list[dict[str, Any]] = []
    if creates and world.subscription_clock is not None and not await world.subscription_clock.pin(until):
        wrong.append({"subscription_id": "", "problems": ["the subscriptions service never took the clock back"]})
    purchases = _purchases(moved, kinds)
    for op in creates:
        tenant = world.tenants[op.tenant]
        for i in range(1000):
            answer = await world.gateway.until_definite(
                "GET", f"{SUBSCRIPTIONS}/{op.subscription_id}", key=tenant.sdk_key, deadline=deadline, stats=stats
            )
            view = body_of(answer)
            charges = purchases.get((op.tenant, op.player), {})  # the only thing a subscriber buys
            problems = [f"read answered {answer.status}"] if answer.status != 200 else _problems(op, view, charges)
            if not problems and not _settled(view, world):
                problems = [f"still due: next attempt {view.get('next_attempt_at')} by the clock"]
            if not problems or time.monotonic() >= until:
                break
            await backoff(i)
            await reread(deadline)
            purchases = _purchases(moved, kinds)
        if problems:
            wrong.append(
                {**op.summary(), "problems": problems, "read": {k: view.get(k) for k in ("status", "periods_paid")}}
            )
        raw = view.get("periods_paid")
        paid = raw if isinstance(raw, int) else 0
        op.allowed_events = [("subscription.renewed", f"{op.subscription_id}:renewed:{p}") for p in range(2, paid + 1)]
        op.allowed_events += [
            (f"subscription.{kind}", f"{op.subscription_id}:{kind}:{p}")
            for kind in ("past_due", "cancelled")
            for p in range(paid, paid + 2)
        ]
        for txn, amount in charges.items():
            if txn in known:
                continue
            renewal = world.model.new(phase=op.phase, flow=RENEWAL_FLOW, tenant=op.tenant, player=op.player)
            renewal.outcome, renewal.transaction_id, renewal.delta_minor = ACKED, txn, amount
            renewal.subscription_id, renewal.acked_at = op.subscription_id, time.monotonic()
            renewal.events = [("item.purchased", txn)]
            renewal.late_events = list(renewal.events)  # the network's own moment, not an answer's
            known.add(txn)
    return len(creates), wrong
