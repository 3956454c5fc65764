"""Partner payouts in the workload: a tenant earns revenue, asks for a payout of it, and INVO's
operator (the bootstrap token) approves it, rejects it, or the partner cancels it; the ACH
simulator drives an approved one to the end its account number says. The check that holds every
payout to exactly once is `faults.payout_checks`.

- earn: the tenant's own earner player is credited an item's price by an operator, then buys the
  item (flow `payout_earning`; the partner keeps 90%): every payout's amount is earned first, so
  a payout never asks for more than the revenue owed and not already held, however many run at
  once (nothing else takes revenue).
- request (flow `payout`, `payout_failed`, `payout_returned`, `payout_rejected`,
  `payout_cancelled`): one idempotency key per operation, resent on every retry with the same body
  (409 PAYOUT_IN_PROGRESS, the first request still placing its hold, is asked again); the answer
  (201, or 200 `duplicate` after a lost answer) names the payout, `requested`.
- review (an operation of its own, on the same payout): the operator approves (flow
  `payout_approve`), or rejects with a reason (`payout_reject`), or the partner cancels
  (`payout_cancel`). A retried approve or reject answered 409 PAYOUT_NOT_PENDING_REVIEW means an
  earlier try went through: the payout is read (`GET /admin/payouts/{id}`) and believed.
- the end: an approved payout goes to the simulator at once (or with the sweep), which moves it by
  its account number, as Modern Treasury's sandbox: `123456789` completes, `111111110` fails after
  processing, `10001` / `10003` complete then are returned R01 / R03. The client does not wait for
  it: the check does.
"""

from __future__ import annotations

import time
from typing import Any

from faults.client import Answer
from faults.flows import Credit, Tenant, World, body_of, settle
from faults.model import ACKED, REFUSED, UNRESOLVED, Op, Replay, minor
from faults.transfers import backoff, count, units

PAYOUTS = "/api/payouts"
ITEM = "/api/item-purchases/purchase-item"
STATUS_CHANGED = "payout.status_changed"
EARN_FLOW = "payout_earning"
APPROVE_FLOW, REJECT_FLOW, CANCEL_FLOW = "payout_approve", "payout_reject", "payout_cancel"
REVIEW_FLOWS = (APPROVE_FLOW, REJECT_FLOW, CANCEL_FLOW)
OPERATOR = "op_bootstrap"  # the bootstrap token's operator id, in approvals and history
USD_CENTS = (100, 250, 1000, 2500)  # from the $1.00 minimum up; all under the two-approver threshold
EARN_MINOR_PER_CENT = 12  # the item bought for a payout of c cents costs 12c minor units: 90% is > 10c
ROUTING = "021000021"
# The simulator's magic account numbers (Modern Treasury's sandbox), by the end they lead to.
ACCOUNTS = {
    "completed": ("123456789",),
    "failed": ("111111110",),
    "returned": ("10001", "10003"),
    "rejected": ("123456789",),
    "cancelled": ("123456789",),
}
RETURN_CODES = {"10001": "R01", "10003": "R03"}
IN_PROGRESS = ("PAYOUT_IN_PROGRESS",)
NOT_PENDING = "PAYOUT_NOT_PENDING_REVIEW"
POLLS_MAX = 40


def usd(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def earner(world: World, tenant: Tenant) -> str:
    """The tenant's player who buys what its payouts are paid from (not one of the mix's players)."""
    return f"earner-{world.model.run_id}-{tenant.index}@faults.test"


def end_of(plan: str, account: str) -> str:
    """What the client expects the payout to end as: its status, and a return's code."""
    return f"returned {RETURN_CODES[account]}" if plan == "returned" else plan


async def call(world: World, op: Op, method: str, path: str, *, deadline: float, **kw: Any) -> Answer:
    """One request until a definite answer that is not "in progress" (asked again, the same), or the deadline."""
    for i in range(POLLS_MAX):
        answer = await world.gateway.until_definite(method, path, deadline=deadline, **kw)
        if answer.error_code not in IN_PROGRESS or time.monotonic() >= deadline or i == POLLS_MAX - 1:
            return answer
        count(op, answer)
        await backoff(i)
    raise RuntimeError("unreachable")


async def earn(world: World, phase: str, tenant: Tenant, price_minor: int) -> Op:
    """An operator credits the earner `price_minor`, then the earner buys an item of that price:
    the tenant earns its 90%. The item purchase's operation is answered (or the credit's, refused)."""
    player = earner(world, tenant)
    credit = await Credit(amount_minor_choices=(price_minor,)).run(world, phase, target=(tenant, player))
    if credit.outcome != ACKED:
        return credit
    op = world.model.new(phase=phase, flow=EARN_FLOW, tenant=tenant.index, player=player)
    body = {
        "player_email": player,
        "item_id": f"payout-pack-{price_minor}",
        "item_name": "Payout Pack",
        "price": units(price_minor),
        "quantity": 1,
        "idempotency_key": op.key,
    }
    deadline = time.monotonic() + world.op_deadline_s
    answer = await world.gateway.until_definite("POST", ITEM, key=tenant.sdk_key, body=body, deadline=deadline)
    if not settle(op, answer):
        return op
    b = body_of(answer)
    if answer.status == 200 and b.get("transaction_id"):
        op.outcome, op.transaction_id, op.delta_minor = ACKED, str(b["transaction_id"]), -price_minor
        if minor(b.get("total", "0")) != price_minor:
            op.note = f"answered total {b.get('total')} for {body['price']}"
        op.events = [("item.purchased", op.transaction_id)]
        fields = {"transaction_id": op.transaction_id, "duplicate": True}
        op.replay = Replay("POST", ITEM, body, tenant.index, fields=fields)
    else:
        op.outcome = REFUSED
    return op


class Payout:
    """One payout earned, asked for and then, by `plan`: approved (and ended by the simulator as
    "completed", "failed" or "returned"), "rejected" by the operator, or "cancelled" by the partner."""

    def __init__(self, name: str, plan: str) -> None:
        if plan not in ACCOUNTS:
            raise ValueError(f"no payout plan {plan!r}")
        self.name = name
        self.plan = plan

    async def run(self, world: World, phase: str, *, tenant: Tenant | None = None) -> Op:
        tenant = tenant or world.rng.choice(world.tenants)
        cents = world.rng.choice(USD_CENTS)
        account = world.rng.choice(ACCOUNTS[self.plan])
        earned = await earn(world, phase, tenant, cents * EARN_MINOR_PER_CENT)
        if earned.outcome != ACKED:
            return earned  # no revenue of its own: no payout
        op = world.model.new(phase=phase, flow=self.name, tenant=tenant.index, player="")
        op.usd_cents, op.payout_end = cents, end_of(self.plan, account)
        body = {
            "usd_amount": usd(cents),
            "contact_email": f"finance-{tenant.index}@faults.test",
            "account_holder_name": "Fault Tolerant Games Inc.",
            "routing_number": ROUTING,
            "account_number": account,
            "account_type": world.rng.choice(("checking", "savings")),
            "idempotency_key": op.key,
        }
        deadline = time.monotonic() + world.op_deadline_s
        answer = await call(world, op, "POST", PAYOUTS, key=tenant.sdk_key, body=body, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status not in (200, 201) or not b.get("payout_id"):
            op.outcome = UNRESOLVED if answer.error_code in IN_PROGRESS else REFUSED
            return op
        op.outcome, op.payout_id, op.payout_status = ACKED, str(b["payout_id"]), str(b.get("status"))
        account_last4 = (b.get("bank_account") or {}).get("account_last4")
        if (op.payout_status, b.get("usd_amount"), account_last4) != ("requested", usd(cents), account[-4:]):
            op.note = f"request answered {op.payout_status}, {b.get('usd_amount')} to ...{account_last4}"
        op.events = [(STATUS_CHANGED, f"{op.payout_id}:requested")]
        fields = {"payout_id": op.payout_id, "usd_amount": usd(cents), "duplicate": True}
        op.replay = Replay("POST", PAYOUTS, body, tenant.index, fields=fields)
        if self.plan == "cancelled":
            await self.cancel(world, op, tenant, deadline)
        else:
            await self.review(world, op, tenant, deadline)
        return op

    async def review(self, world: World, main: Op, tenant: Tenant, deadline: float) -> Op:
        """The operator's approval (or rejection), as its own operation."""
        reject = self.plan == "rejected"
        op = world.model.new(
            phase=main.phase, flow=REJECT_FLOW if reject else APPROVE_FLOW, tenant=tenant.index, player=""
        )
        op.payout_id, op.usd_cents, op.payout_end = main.payout_id, main.usd_cents, main.payout_end
        path = f"/admin/payouts/{main.payout_id}/{'reject' if reject else 'approve'}"
        body = {"reason": f"faults: rejected {main.key}"} if reject else None
        answer = await world.gateway.until_definite("POST", path, admin=True, body=body, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status == 409 and answer.error_code == NOT_PENDING and answer.indefinite:
            # An earlier try went through and its answer was lost: the payout says what it did.
            read = await world.gateway.until_definite(
                "GET", f"/admin/payouts/{main.payout_id}", admin=True, deadline=deadline
            )
            count(op, read)
            b = body_of(read)
            if read.status == 200 and reviewed(b, reject):
                op.note = "reviewed by an earlier try (the payout's read)"
                answer, op.status, op.error_code = read, read.status, ""
        if answer.status == 200 and reviewed(b, reject):
            op.outcome, op.payout_status = ACKED, str(b.get("status"))
            replay_body = {"reason": "faults: asked again"} if reject else {}
            fields = {"error_code": NOT_PENDING}
            op.replay = Replay("POST", path, replay_body, tenant.index, admin=True, status=409, fields=fields)
        else:
            op.outcome = REFUSED
        return op

    async def cancel(self, world: World, main: Op, tenant: Tenant, deadline: float) -> Op:
        """The partner takes its request back before review, as its own operation."""
        op = world.model.new(phase=main.phase, flow=CANCEL_FLOW, tenant=tenant.index, player="")
        op.payout_id, op.usd_cents, op.payout_end = main.payout_id, main.usd_cents, main.payout_end
        path = f"{PAYOUTS}/{main.payout_id}/cancel"
        answer = await world.gateway.until_definite("POST", path, key=tenant.sdk_key, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status == 200 and b.get("status") == "cancelled":
            op.outcome, op.payout_status = ACKED, "cancelled"
            fields = {"payout_id": main.payout_id, "status": "cancelled", "duplicate": True}
            op.replay = Replay("POST", path, {}, tenant.index, fields=fields)
        else:
            op.outcome = REFUSED
        return op


def reviewed(view: dict[str, Any], reject: bool) -> bool:
    """The payout as an answer shows it bears the operator's decision: rejected, or approved by it
    (and on its way, or at its end already)."""
    if reject:
        return view.get("status") == "rejected"
    approvers = [a.get("operator_id") for a in view.get("approvals") or []]
    return view.get("status") not in ("requested", "rejected", "cancelled", None) and OPERATOR in approvers
