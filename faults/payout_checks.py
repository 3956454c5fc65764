"""The payouts' check, after each phase: every payout the workload asked for, held to exactly once
against what the client was told, the ACH provider's record and each payout tenant's revenue
(`faults.payouts` makes them).

- Each payout is read as an operator reads it (`GET /admin/payouts/{id}`) once it is no longer
  `approved` or `processing` (and, bound to be returned, no longer `completed`): the sweep sends
  what a crash or an outage left approved and asks the provider about what is in flight, and is
  waited on (at most SWEEP_WAIT_S); one still in flight then is a finding.
- It reads as the client was told or further along its lifecycle, and ends as the client drove
  it: approved ones as the simulator's account number says (completed; failed; returned with
  R01 / R03), rejected ones rejected, cancelled ones cancelled; for the amount asked, approved by
  the one operator; its history one chain of allowed moves, each status entered once.
- At the provider (`GET <INVO_ACH_API_BASE>/api/payment_orders?metadata[payout_id]=`, the list the
  SDK's `payment_orders.list(metadata=...)` reads): exactly one payment order for a payout that was
  approved, none for one that never was; the order the payout names, for its amount, in the state
  the payout ended in.
- Each transition is promised as its own `payout.status_changed` (`faults.evidence` then holds
  them to once each, and none that no payout explains).
- Revenue (`GET /api/revenue`), for each tenant with payouts once none is in flight: lifetime is
  what the model says it earned (90% of its item purchases, its shares of claimed transfers'
  fees); owed is that less what completed and was not returned; held is what waits for review;
  paid out, returned and available follow. A second settlement, a hold never released, a return
  never credited: each shows here.
- A review or a cancel refused is a finding: the client drives each payout as the API says.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Mapping
from typing import Any

from faults.client import Stats
from faults.flows import World, body_of
from faults.model import ABANDONED, ACKED, REFUSED, UNRESOLVED, Op, minor
from faults.payouts import APPROVE_FLOW, EARN_FLOW, OPERATOR, STATUS_CHANGED, usd
from faults.subscriptions import FLOW as SUBSCRIPTION_FLOW
from faults.subscriptions import RENEWAL_FLOW
from faults.transfers import CLAIM_FLOW, backoff

SWEEP_WAIT_S = 90.0  # a crashed worker's lease (2 x INVO_ACH_TIMEOUT_S + INVO_RPC_TIMEOUT_S + 5), the poll's 30 s
IN_FLIGHT = ("approved", "processing")
NEXT = {
    "requested": ("approved", "rejected", "cancelled"),
    "approved": ("processing", "failed"),
    "processing": ("completed", "failed"),
    "completed": ("returned",),
}
ORDER_STATUS = {"completed": "completed", "returned": "returned", "failed": "failed"}  # the payout's end -> the order's
# Item purchases split between the partner and the network; a subscription's charges are ones too.
ITEM_FLOWS = ("item_purchase", EARN_FLOW, SUBSCRIPTION_FLOW, RENEWAL_FLOW)
DESTINATION_BPS = 350  # a transfer's destination tenant earns 3.5% (README, Fees and rounding)
BPS_WHOLE = 10_000
REVENUE_FIELDS = ("lifetime", "owed", "held", "available", "paid_out", "returned")


def reachable(start: str) -> set[str]:
    """`start` and every status after it in the lifecycle."""
    found, todo = {start}, [start]
    while todo:
        for nxt in NEXT.get(todo.pop(), ()):
            if nxt not in found:
                found.add(nxt)
                todo.append(nxt)
    return found


def _done(view: dict[str, Any], end: str) -> bool:
    """No more moves to wait for: not in flight, and not completed when bound to be returned."""
    status = view.get("status")
    return status not in IN_FLIGHT and not (status == "completed" and end.startswith("returned"))


class PayoutChecks:
    def __init__(self, world: World, env: Mapping[str, str], stats: Stats) -> None:
        self.world = world
        self.stats = stats
        self.ach_base = env.get("INVO_ACH_API_BASE", "").rstrip("/")
        basic = f"{env.get('INVO_ACH_ORGANIZATION_ID', '')}:{env.get('INVO_ACH_API_KEY', '')}"
        self.ach_auth = {"Authorization": f"Basic {base64.b64encode(basic.encode()).decode()}"}
        self.views: dict[str, dict[str, Any]] = {}  # payout_id -> its latest read
        self.fees: dict[int, tuple[int, int]] = {}  # tenant -> (network_fee_bps, transfer_fee_bps)

    async def check(self, ops: list[Op], deadline: float) -> tuple[int, list[dict[str, Any]]]:
        """The payouts `ops` touched (and any an earlier check left with a move to come), then the
        revenue of every tenant with payouts; findings with payout_id "" are a tenant's revenue."""
        payouts = self.world.model.payouts()
        wanted = dict.fromkeys(op.payout_id for op in ops if op.payout_id)
        wanted |= dict.fromkeys(p for p, v in self.views.items() if not _done(v, payouts[p][0].payout_end))
        until = min(deadline, time.monotonic() + SWEEP_WAIT_S)
        wrong: list[dict[str, Any]] = []
        for payout_id in wanted:
            main, *steps = payouts[payout_id]
            status, view = await self.read_settled(payout_id, main.payout_end, until)
            if status == 200:
                self.views[payout_id] = view
                promise_events(main, view)
            orders = await self.orders(payout_id, deadline)
            problems = [f"the operator's read answered {status}"] if status != 200 else []
            if status == 200:
                problems += against_client(main, steps, view)
                problems += against_provider(view, orders)
            if problems:
                wrong.append({**main.summary(), "problems": problems, "read": brief(view), "orders": orders})
        return len(wanted), wrong + await self.revenue(deadline)

    async def read_settled(self, payout_id: str, end: str, until: float) -> tuple[int, dict[str, Any]]:
        """The payout as an operator reads it, once it has no move left to wait for (or at `until`)."""
        status, view = 0, {}
        i = 0
        while True:
            answer = await self.world.gateway.until_definite(
                "GET", f"/admin/payouts/{payout_id}", admin=True, deadline=until, stats=self.stats
            )
            status, view = answer.status, body_of(answer)
            if status != 200 or _done(view, end) or time.monotonic() >= until:
                return status, view
            await backoff(i)  # the simulator's next state, its webhook, or the sweep's next round
            i += 1

    async def orders(self, payout_id: str, deadline: float) -> list[dict[str, Any]]:
        """The provider's payment orders made for the payout (its metadata), as they are now."""
        answer = await self.world.gateway.until_definite(
            "GET",
            f"{self.ach_base}/api/payment_orders",
            params={"metadata[payout_id]": payout_id, "per_page": "100"},
            headers=self.ach_auth,
            deadline=deadline,
            stats=self.stats,
        )
        if answer.status != 200 or not isinstance(answer.body, list):
            return [{"error": f"the provider's list answered {answer.status}: {answer.body!r:.200}"}]
        return [
            {"id": po.get("id"), "status": po.get("status"), "amount": po.get("amount")}
            for po in answer.body
            if isinstance(po, dict) and (po.get("metadata") or {}).get("payout_id") == payout_id
        ]

    async def revenue(self, deadline: float) -> list[dict[str, Any]]:
        """Each tenant with payouts, its revenue against the model, once none of its payouts is in
        flight (that is a finding of its own) and every operation it earned by has an answer."""
        model = self.world.model
        uncertain = self._uncertain()
        by_tenant: dict[int, list[Op]] = {}
        for ops in model.payouts().values():
            by_tenant.setdefault(ops[0].tenant, []).append(ops[0])
        wrong = []
        for index, mains in sorted(by_tenant.items()):
            views = [self.views.get(op.payout_id, {}) for op in mains]
            if index in uncertain or any(v.get("status") in IN_FLIGHT or not v for v in views):
                continue
            want = await self.expected(index, mains, deadline)
            tenant = self.world.tenants[index]
            answer = await self.world.gateway.until_definite(
                "GET", "/api/revenue", key=tenant.sdk_key, deadline=deadline, stats=self.stats
            )
            b = body_of(answer)
            have = {k: minor(b[f"{k}_units"]) for k in REVENUE_FIELDS if f"{k}_units" in b}
            if answer.status != 200 or have != want:
                wrong.append(
                    {"payout_id": "", "tenant": index, "revenue_minor": have, "expected_minor": want}
                    | {"problems": [f"revenue {answer.status} {have} minor, the model says {want}"]}
                )
        return wrong

    async def expected(self, index: int, mains: list[Op], deadline: float) -> dict[str, int]:
        """The tenant's revenue, in minor units, as its earnings and its payouts' ends give it."""
        earned = await self.earnings(index, deadline)
        amount = {op.payout_id: op.usd_cents * 10 for op in mains}  # 1 USD cent = 10 minor units
        by_status: dict[str, int] = {}
        for op in mains:
            status = str(self.views[op.payout_id].get("status"))
            by_status[status] = by_status.get(status, 0) + amount[op.payout_id]
        completed, returned = by_status.get("completed", 0), by_status.get("returned", 0)
        held = by_status.get("requested", 0)
        owed = earned - completed
        return {
            "lifetime": earned,
            "owed": owed,
            "held": held,
            "available": owed - held,
            "paid_out": completed,
            "returned": returned,
        }

    async def earnings(self, index: int, deadline: float) -> int:
        """What the model says the tenant earned: the partner's part of each acknowledged item
        purchase (the network's fee rounded down), and its shares of claimed transfers' fees."""
        network_bps, _ = await self.tenant_fees(index, deadline)
        total = 0
        for op in self.world.model.acked():
            if op.flow in ITEM_FLOWS and op.tenant == index:
                total += -op.delta_minor - (-op.delta_minor * network_bps // BPS_WHOLE)
        for ops in self.world.model.transfers().values():
            main, claims = ops[0], [op for op in ops[1:] if op.flow == CLAIM_FLOW and op.outcome == ACKED]
            for claim in claims:
                if main.tenant == index:
                    source_bps = (await self.tenant_fees(main.tenant, deadline))[1]
                    total += claim.delta_minor * source_bps // BPS_WHOLE
                if claim.tenant == index:
                    total += claim.delta_minor * DESTINATION_BPS // BPS_WHOLE
        return total

    async def tenant_fees(self, index: int, deadline: float) -> tuple[int, int]:
        """(network fee, transfer fee) of the tenant in basis points, as an operator reads them."""
        if index not in self.fees:
            tenant = self.world.tenants[index]
            answer = await self.world.gateway.until_definite(
                "GET", f"/admin/tenants/{tenant.tenant_id}", admin=True, deadline=deadline, stats=self.stats
            )
            b = body_of(answer)
            if answer.status != 200:
                raise RuntimeError(f"tenant {index}: {answer.status} {answer.body!r:.300}")
            self.fees[index] = (minor(b["network_fee_percentage"]), minor(b["transfer_fee_percentage"]))
        return self.fees[index]

    def _uncertain(self) -> set[int]:
        """Tenants whose revenue the model cannot know: an item purchase, a transfer's claim or a
        payout's request without a definite answer (each already a finding)."""
        out: set[int] = set()
        transfers = self.world.model.transfers()
        for op in self.world.model.ops:
            if op.outcome not in (UNRESOLVED, ABANDONED):
                continue
            if op.flow in ITEM_FLOWS or (op.payout_end and not op.payout_id):  # an item, or a request
                out.add(op.tenant)
            if op.flow == CLAIM_FLOW and op.transfer_id:
                out.update({op.tenant, transfers[op.transfer_id][0].tenant})
        return out


def promise_events(main: Op, view: dict[str, Any]) -> None:
    """Each transition the payout made is one `payout.status_changed`, promised; the ones it may
    still make may come."""
    moves = [str(h.get("to")) for h in view.get("history") or [] if h.get("from") != h.get("to")]
    main.events = [(STATUS_CHANGED, f"{main.payout_id}:{to}") for to in dict.fromkeys(moves)]
    main.late_events = [e for e in main.events if not e[1].endswith(":requested")]
    later = reachable(str(view.get("status"))) - {view.get("status")}
    main.allowed_events = [(STATUS_CHANGED, f"{main.payout_id}:{to}") for to in sorted(later)]


def against_client(main: Op, steps: list[Op], view: dict[str, Any]) -> list[str]:
    status = str(view.get("status"))
    reviews = [op for op in steps if op.outcome == ACKED]
    problems = []
    if status in IN_FLIGHT or (status == "completed" and main.payout_end.startswith("returned") and reviews):
        problems.append(f"left {status} after the sweep had its time")
    told = [op.payout_status for op in (main, *reviews) if op.payout_status]
    if told and status not in reachable(told[-1]):
        problems.append(f"reads {status}, the client was told {told[-1]}")
    if reviews:
        end, _, code = main.payout_end.partition(" ")
        if (status, view.get("return_code") or "") != (end, code):
            problems.append(f"ended {status} {view.get('return_code') or ''}".rstrip() + f", not {main.payout_end}")
    elif status != "requested" and not any(op.outcome == UNRESOLVED for op in steps):
        problems.append(f"reads {status}, but the client was told of no review")
    if view.get("usd_amount") != usd(main.usd_cents):
        problems.append(f"{view.get('usd_amount')} USD, the client asked {usd(main.usd_cents)}")
    approvers = [a.get("operator_id") for a in view.get("approvals") or []]
    approvals = [op for op in reviews if op.flow == APPROVE_FLOW]
    if not any(op.outcome == UNRESOLVED for op in steps) and approvers != [OPERATOR] * len(approvals):
        problems.append(f"approved by {approvers}, the client's operator approved {len(approvals)} times")
    problems += history_problems(view)
    for op in (main, *steps):
        if op.outcome == REFUSED or op.error_code:
            problems.append(f"{op.flow} refused: {op.status} {op.error_code}")
    return problems


def history_problems(view: dict[str, Any]) -> list[str]:
    """One chain of allowed moves from (None, requested) to the status read, each status once."""
    moves = [(h.get("from"), h.get("to")) for h in view.get("history") or [] if h.get("from") != h.get("to")]
    problems = []
    if not moves or moves[0] != (None, "requested"):
        problems.append(f"its history begins {moves[:1]}, not requested")
    for (_, to), (frm, nxt) in itertools.pairwise(moves):
        if frm != to or nxt not in NEXT.get(str(to), ()):
            problems.append(f"its history moves {frm} -> {nxt} after {to}")
    tos = [to for _, to in moves]
    if len(set(tos)) != len(tos):
        problems.append(f"its history enters a status twice: {tos}")
    if tos and tos[-1] != view.get("status"):
        problems.append(f"its history ends {tos[-1]}, it reads {view.get('status')}")
    return problems


def against_provider(view: dict[str, Any], orders: list[dict[str, Any]]) -> list[str]:
    """One payment order for a payout that was approved (none for one never approved), the one it
    names, for its amount, in the state the payout ended in."""
    if any("error" in o for o in orders):
        return [str(orders[0]["error"])]
    approved = any(h.get("to") == "approved" for h in view.get("history") or [])
    status = str(view.get("status"))
    problems = []
    if len(orders) > 1:
        problems.append(f"{len(orders)} payment orders at the provider for one payout")
    if not approved:
        if orders:
            problems.append(f"a payment order for a payout never approved ({status})")
        return problems
    if not orders:
        if status != "approved":
            problems.append(f"{status} without a payment order at the provider")
        return problems
    if view.get("provider_payment_order_id") not in (None, *(o["id"] for o in orders)):
        problems.append(f"names payment order {view.get('provider_payment_order_id')}, not the provider's")
    if any(o.get("amount") != minor(view.get("usd_amount") or "0") for o in orders):
        problems.append(f"payment orders of {[o.get('amount') for o in orders]} cents for {view.get('usd_amount')}")
    want = ORDER_STATUS.get(status)
    if want is not None and any(o.get("status") != want for o in orders):
        problems.append(f"{status}, its payment orders {[o.get('status') for o in orders]}")
    return problems


def brief(view: dict[str, Any]) -> dict[str, Any]:
    keys = ("status", "usd_amount", "return_code", "approvals_received", "provider_payment_order_id", "reason")
    return {k: view.get(k) for k in keys} | {"history": [h.get("to") for h in view.get("history") or []]}
