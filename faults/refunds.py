"""Operators' refunds in the workload: a currency purchase by card, then, once it is paid, one or
two refunds through the admin API (all of it at once, a part, or a part then the rest), and the
check that every refunded order, and the processor, hold exactly the refunds the operator was told.

Each refund is an operation of its own (flow `refund`), under its own idempotency key, resent on
every retry after a lost answer, a 5xx or a timeout: the key is also the processor's, so a retried
refund is one processor refund. The model expects the player's wallet debited by the pro-rata
rule (the contract's): the k-th refund of an order of U cents and C minor units takes
C*R_k//U - C*R_(k-1)//U, R the running USD refunded, never more than is still unreturned. After a
whole refund, one more (a cent, a new key) must be refused and change nothing.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from faults.client import Stats
from faults.flows import MINOR_PER_CENT, PURCHASE, Tenant, World, body_of, purchase_body, record_purchase_answer, settle
from faults.model import ACKED, REFUSED, UNRESOLVED, Op, Replay, minor

VISA = "pm_card_visa"
REFUND_FLOW = "refund"
REASONS = ("requested_by_customer", "duplicate", "fraudulent")
PLANS = ("whole", "partial", "partial_then_rest")
PENDING_POLLS_MAX = 20  # answered with the refund still pending at the processor: the same key drives it on
# Definite refusals that are right only when nothing of the order remains to refund.
NOTHING_LEFT = {(400, "REFUND_EXCEEDS_REMAINING"), (409, "ORDER_NOT_REFUNDABLE")}


def usd(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def cents(amount: object) -> int:
    """A USD string ("2.50") as cents: two decimals, as `minor` reads units."""
    return minor(amount)


def pro_rata_debit(currency: int, charged: int, before_cents: int, after_cents: int, debited: int) -> int:
    """The currency one refund takes back (the contract's rule), never more than is unreturned."""
    after_cents = min(after_cents, charged)  # an over-refund debits nothing more (the check flags it)
    share = currency * after_cents // charged - currency * before_cents // charged
    return max(0, min(share, currency - debited))


class RefundPurchase:
    """A purchase by card, then its refunds as `plans` draw them."""

    def __init__(self, name: str = "refund_purchase", plans: tuple[str, ...] = PLANS, usd_cents: int = 100) -> None:
        self.name = name
        self.plans = plans
        self.usd_cents = usd_cents

    async def run(self, world: World, phase: str) -> Op:
        tenant, player = world.pick()
        purchase = world.model.new(phase=phase, flow=self.name, tenant=tenant.index, player=player)
        body = purchase_body(player, self.usd_cents, VISA, purchase.key)
        deadline = time.monotonic() + world.op_deadline_s
        answer = await world.gateway.until_definite("POST", PURCHASE, key=tenant.sdk_key, body=body, deadline=deadline)
        if not settle(purchase, answer):
            return purchase
        record_purchase_answer(purchase, answer, tenant, body, self.usd_cents)
        if purchase.outcome != ACKED or not purchase.order_id:
            return purchase
        plan = world.rng.choice(self.plans)
        amounts: list[int | None] = [None]  # "whole": no amount, all that remains
        if plan != "whole":
            part = world.rng.randint(1, self.usd_cents - 1)
            # The rest either named or left to the default (all that remains): both are one refund.
            amounts = [part] if plan == "partial" else [part, world.rng.choice((None, self.usd_cents - part))]
        done: list[Op] = []
        for amount in amounts:
            op = await self.refund(world, tenant, purchase, amount, done)
            if op.outcome != ACKED:
                return purchase
            done.append(op)
        if sum(op.usd_cents for op in done) >= self.usd_cents:
            await self.refund(world, tenant, purchase, 1, done)  # nothing remains: must be refused
        return purchase

    async def refund(self, world: World, tenant: Tenant, purchase: Op, amount: int | None, done: list[Op]) -> Op:
        """One refund of `purchase`'s order, after the acknowledged ones in `done`."""
        op = world.model.new(phase=purchase.phase, flow=REFUND_FLOW, tenant=tenant.index, player=purchase.player)
        op.refund_of = purchase.order_id
        charged = purchase.delta_minor // MINOR_PER_CENT
        before = sum(r.usd_cents for r in done)
        op.usd_cents = charged - before if amount is None else amount
        body: dict[str, Any] = {"reason": world.rng.choice(REASONS), "idempotency_key": op.key}
        if amount is not None:
            body["usd_amount"] = usd(amount)
        path = f"/admin/orders/{purchase.order_id}/refunds"
        deadline = time.monotonic() + world.op_deadline_s
        for i in range(PENDING_POLLS_MAX):
            answer = await world.gateway.until_definite("POST", path, admin=True, body=body, deadline=deadline)
            if not settle(op, answer):
                return op
            pending = (body_of(answer).get("refund") or {}).get("status") == "pending"
            if answer.status not in (200, 201) or not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(1.0, 0.05 * 2**i))  # the processor's refund is on its way
        b = body_of(answer)
        refund = b.get("refund") or {}
        if answer.status in (200, 201) and refund.get("status") == "succeeded":
            op.outcome, op.refund_id = ACKED, str(refund.get("refund_id") or "")
            op.transaction_id = str(refund.get("transaction_id") or "")
            debited = -sum(r.delta_minor for r in done)
            op.delta_minor = -pro_rata_debit(purchase.delta_minor, charged, before, before + op.usd_cents, debited)
            if cents(refund.get("usd_amount", "0")) != op.usd_cents or minor(refund.get("currency_debited", "0")) != (
                -op.delta_minor
            ):
                op.note = f"refund answered {refund.get('usd_amount')} USD, {refund.get('currency_debited')} debited"
            op.events = [("purchase.refunded", op.refund_id)]
            op.replay = Replay(
                "POST", path, body, tenant.index, admin=True, fields={"duplicate": True, "refund": refund}
            )
        elif answer.status in (200, 201):
            op.outcome = UNRESOLVED  # acknowledged but never finished within the deadline
            op.refund_id = str(refund.get("refund_id") or "")
            op.note = f"refund {op.refund_id} still {refund.get('status')}"
        else:
            op.outcome = REFUSED
            if answer.status == 409:  # the order refunded is final: asked again, it answers the same
                op.replay = Replay(
                    "POST", path, body, tenant.index, admin=True, status=409, fields={"error_code": op.error_code}
                )
        return op


async def check_refunds(
    world: World, ops: list[Op], processor_refunds: list[dict[str, Any]], deadline: float, stats: Stats
) -> tuple[int, list[dict[str, Any]]]:
    """Each order refunded in `ops`: its refunds as the operator was told (succeeded ones' USD and
    currency, the order refunded iff wholly), refusals only when nothing remained, and at the
    processor exactly one refund per succeeded refund of ours, never more than was charged."""
    at_processor: dict[str, list[dict[str, Any]]] = {}
    for r in processor_refunds:
        if r.get("status") == "succeeded":
            at_processor.setdefault(str(r.get("payment_intent")), []).append(r)
    asked = world.model.refunds()
    purchases = world.model.by_order()
    wrong: list[dict[str, Any]] = []
    checked = 0
    for order_id in dict.fromkeys(op.refund_of for op in ops if op.refund_of):
        mine = asked[order_id]
        if any(op.outcome == UNRESOLVED for op in mine):
            continue  # already a violation (unresolved), and the model cannot say what to expect
        checked += 1
        answer = await world.gateway.until_definite(
            "GET", f"/admin/orders/{order_id}", admin=True, deadline=deadline, stats=stats
        )
        order = body_of(answer)
        charged = purchases[order_id].delta_minor // MINOR_PER_CENT
        pi = str(order.get("payment_intent_id") or "")
        problems = [f"the operator's read answered {answer.status}"] if answer.status != 200 else []
        problems += _against_model(order, mine, charged)
        problems += _against_processor(order, at_processor.get(pi, []), charged)
        if problems:
            refunds = order.get("refunds") or []
            wrong.append({"order_id": order_id, "problems": problems, "refunds": refunds, "asked": _asked(mine)})
    return checked, wrong


def _against_model(order: dict[str, Any], mine: list[Op], charged: int) -> list[str]:
    acked = [op for op in mine if op.outcome == ACKED]
    usd_want, currency_want = sum(op.usd_cents for op in acked), -sum(op.delta_minor for op in acked)
    succeeded = [r for r in order.get("refunds") or [] if r.get("status") == "succeeded"]
    problems = []
    usd_have = sum(cents(r.get("usd_amount", "0")) for r in succeeded)
    currency_have = sum(minor(r.get("currency_debited", "0")) for r in succeeded)
    if (usd_have, currency_have) != (usd_want, currency_want):
        problems.append(
            f"succeeded refunds of {usd(usd_have)} USD debiting {currency_have} minor;"
            f" the operator was told {usd(usd_want)} USD, {currency_want} minor by the pro-rata rule"
        )
    if {r.get("refund_id") for r in succeeded} != {op.refund_id for op in acked}:
        problems.append("succeeded refunds other than the ones the operator was told")
    if any(r.get("status") in ("pending", "applying") for r in order.get("refunds") or []):
        problems.append("a refund left unfinished")
    if (order.get("status") == "refunded") != (usd_want >= charged):
        problems.append(f"status {order.get('status')} with {usd(usd_want)} of {usd(charged)} USD refunded")
    if usd_want > charged or cents(order.get("usd_refunded", "0")) > charged:
        problems.append(f"more USD refunded than the {usd(charged)} charged")
    for op in mine:
        before = sum(r.usd_cents for r in acked if r.op_id < op.op_id)
        if op.outcome == REFUSED and ((op.status, op.error_code) not in NOTHING_LEFT or before < charged):
            problems.append(f"refund {op.key} refused {op.status} {op.error_code} with {usd(charged - before)} left")
    return problems


def _against_processor(order: dict[str, Any], made: list[dict[str, Any]], charged: int) -> list[str]:
    succeeded = [r for r in order.get("refunds") or [] if r.get("status") == "succeeded"]
    problems = []
    ours = collections.Counter(str(r.get("refund_id")) for r in succeeded)
    theirs = collections.Counter(str((r.get("metadata") or {}).get("refund_id")) for r in made)
    if ours != theirs:
        problems.append(f"the processor holds {len(made)} refunds for {len(succeeded)} succeeded of ours")
    if {r.get("processor_refund_id") for r in succeeded} - {r.get("id") for r in made}:
        problems.append("a succeeded refund the processor does not hold")
    total = sum(int(r.get("amount") or 0) for r in made)
    if total != sum(cents(r.get("usd_amount", "0")) for r in succeeded):
        problems.append(f"the processor refunded {usd(total)} USD, our succeeded refunds say otherwise")
    if total > charged:
        problems.append(f"the processor refunded {usd(total)} USD of {usd(charged)} charged")
    return problems


def _asked(mine: list[Op]) -> list[dict[str, Any]]:
    return [
        {"key": op.key, "outcome": op.outcome, "usd_cents": op.usd_cents, "delta_minor": op.delta_minor}
        | {"status": op.status, "error_code": op.error_code, "refund_id": op.refund_id}
        for op in mine
    ]
