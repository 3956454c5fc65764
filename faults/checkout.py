"""Hosted checkout in the workload: a session minted with the SDK key and paid through the page's
API with its token, as the page's script does (the browser is not in the loop), and the check that
every session the workload made ends as its orders say.

The session's token is the retry key of pay: a pay retried after a lost answer pays once (its
retry answers from the attempt in flight, or 409 SESSION_ALREADY_CONSUMED once paid), and a pay
after a failed attempt (a decline, the processor unavailable) makes the next attempt, a new order.
Whatever the answer was, the page's own view (`GET /checkout/api/session`, what the page polls) is
the authoritative read the flow falls back on, and the partner's (`GET /api/checkout/sessions/{id}`)
is what the check holds the session to.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faults.client import Answer, Stats
from faults.evidence import session_of
from faults.flows import MINOR_PER_CENT, ORDER, Tenant, World, body_of, settle
from faults.model import ABANDONED, ACKED, REFUSED, UNRESOLVED, Op, Replay, minor

SESSIONS = "/api/checkout/sessions"
PAGE_PAY = "/checkout/api/pay"
PAGE_SESSION = "/checkout/api/session"
VISA = "pm_card_visa"
SESSION_POLLS_MAX = 20  # pay answered "pending" or "in progress": the page's view is read until it settles
PAYS_MAX = 4  # pay calls on one card: the first, and new attempts after attempts that failed (no decline)
UNSETTLED = ("pending_payment", "requires_action")
FAILED = ("failed", "cancelled")
IN_FLIGHT = ("PAYMENT_IN_PROGRESS", "SESSION_ALREADY_CONSUMED")  # 409s that say an earlier call got there


class CheckoutPurchase:
    """One session, paid with `cards` in turn: a declined card is followed by the next one on the
    same session (the page's "Try another card"), so a session may hold several orders, of which
    at most one is paid."""

    def __init__(self, name: str, cards: tuple[str, ...] = (VISA,), usd_cents: int = 100) -> None:
        self.name = name
        self.cards = cards
        self.usd_cents = usd_cents

    async def run(self, world: World, phase: str) -> Op:
        tenant, player = world.pick()
        op = world.model.new(phase=phase, flow=self.name, tenant=tenant.index, player=player)
        deadline = time.monotonic() + world.op_deadline_s
        mint = {
            "player_email": player,
            "usd_amount": f"{self.usd_cents // 100}.{self.usd_cents % 100:02d}",
            "success_url": "https://faults.example/ok",
            "cancel_url": "https://faults.example/cancel",
            "metadata": {"op": op.key},
        }
        # Minting changes no money: a lost answer is simply minted again (an unused session expires).
        answer = await world.gateway.until_definite("POST", SESSIONS, key=tenant.sdk_key, body=mint, deadline=deadline)
        if not settle(op, answer):
            return op
        if answer.status != 201:
            op.outcome = REFUSED
            return op
        minted = body_of(answer)
        op.session_id = str(minted["session_id"])
        op.session_token = str(minted["checkout_url"]).partition("session=")[2]
        for card in self.cards:
            if await self._pay(world, tenant, op, card, deadline):
                break
        return op

    async def _pay(self, world: World, tenant: Tenant, op: Op, card: str, deadline: float) -> bool:
        """Pay with one card; True when the operation is settled, False after a decline (the next
        card may follow)."""
        bearer = {"Authorization": f"Bearer {op.session_token}"}
        body = {"payment_method_id": card, "save_card": False}
        for _ in range(PAYS_MAX):
            answer = await world.gateway.until_definite("POST", PAGE_PAY, headers=bearer, body=body, deadline=deadline)
            if not settle(op, answer):
                return True
            b = body_of(answer)
            self._order(op, str(b.get("order_id") or ""))
            if answer.status == 200 and b.get("status") == "success" and b.get("transaction_id"):
                self._paid(op, tenant, str(b["transaction_id"]))
                return True
            if answer.status == 402:
                return await self._declined(world, op, answer, deadline)
            if not (answer.status == 200 and b.get("status") == "pending") and answer.error_code not in IN_FLIGHT:
                op.outcome = REFUSED  # a limit, an expired session: nothing was charged
                op.allowed_events += [("purchase.failed", o) for o in op.orders]
                return True
            view = await self.settled_view(world, op, deadline)
            order = view.get("order") or {}
            self._order(op, str(order.get("order_id") or ""))
            if view.get("status") == "completed" and order.get("transaction_id"):
                self._paid(op, tenant, str(order["transaction_id"]))
                return True
            if order.get("status") not in FAILED:
                op.outcome = ABANDONED  # still in flight at the deadline: the checks read it again later
                op.note = f"checkout session {op.session_id} read {view.get('status')}, order {order.get('status')}"
                op.allowed_events += [(e, o) for o in op.orders for e in ("purchase.completed", "purchase.failed")]
                return True
            # The attempt failed without a decline (the processor was unavailable, say): the page
            # says "Try again", and the next pay is a new attempt on the same session.
            op.allowed_events.append(("purchase.failed", str(order.get("order_id"))))
        op.outcome = REFUSED
        return True

    async def _declined(self, world: World, op: Op, answer: Answer, deadline: float) -> bool:
        """A declined card is an order that failed, announced (`purchase.failed`); the session stays open."""
        if not op.order_id:  # the decline's answer did not name its order: the page's view does
            self._order(op, str((await self.settled_view(world, op, deadline)).get("order", {}).get("order_id") or ""))
        if op.order_id:
            op.events.append(("purchase.failed", op.order_id))
        op.outcome = REFUSED
        return False

    @staticmethod
    def _order(op: Op, order_id: str) -> None:
        if order_id:
            op.order_id = order_id
            if order_id not in op.orders:
                op.orders.append(order_id)

    def _paid(self, op: Op, tenant: Tenant, transaction_id: str) -> None:
        op.outcome, op.transaction_id = ACKED, transaction_id
        op.delta_minor = self.usd_cents * MINOR_PER_CENT
        op.events.append(("purchase.completed", op.order_id))
        op.allowed_events = [(t, o) for t, o in op.allowed_events if (t, o) not in op.events]
        # Paying the paid session again (the retry a lost answer causes) must charge nothing: 409.
        bearer = {"Authorization": f"Bearer {op.session_token}"}
        body = {"payment_method_id": VISA, "save_card": False}
        fields = {"error_code": "SESSION_ALREADY_CONSUMED"}
        op.replay = Replay("POST", PAGE_PAY, body, tenant.index, status=409, fields=fields, headers=bearer)

    @staticmethod
    async def settled_view(world: World, op: Op, deadline: float, stats: Stats | None = None) -> dict[str, Any]:
        """The page's view once its current attempt is no longer in flight (or at the deadline)."""
        bearer = {"Authorization": f"Bearer {op.session_token}"}
        view: dict[str, Any] = {}
        for i in range(SESSION_POLLS_MAX):
            answer = await world.gateway.until_definite(
                "GET", PAGE_SESSION, headers=bearer, deadline=deadline, stats=stats
            )
            view = body_of(answer)
            order = view.get("order") or {}
            in_flight = answer.error_code == "PAYMENT_IN_PROGRESS" or order.get("status") in UNSETTLED
            if answer.status != 200 or not in_flight or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(1.0, 0.05 * 2**i))  # the page polls too: the charge's answer is coming
        return view


async def resolve(world: World, op: Op, deadline: float, stats: Stats) -> str:
    """A checkout operation left in flight, read again from the page's view: its new outcome."""
    view = await CheckoutPurchase.settled_view(world, op, deadline, stats)
    order = view.get("order") or {}
    if view.get("status") == "completed" and order.get("transaction_id"):
        CheckoutPurchase._order(op, str(order.get("order_id") or ""))
        op.outcome, op.transaction_id = ACKED, str(order["transaction_id"])
        op.delta_minor = minor(view.get("currency_amount", "0"))
        op.events.append(("purchase.completed", op.order_id))  # after the declines it may have had
        op.allowed_events = []
        op.note += "; settled after the client gave up (the page's view)"
    elif order.get("status") in FAILED or view.get("status") in ("expired", "cancelled"):
        op.outcome = REFUSED
    return op.outcome


async def check_sessions(
    world: World, ops: list[Op], intents: list[dict[str, Any]], deadline: float, stats: Stats
) -> tuple[int, list[dict[str, Any]]]:
    """Each session ends completed iff one of its orders is paid, and that order is the one the
    partner reads, the one the client was told (if told), charged once at the processor."""
    charged: dict[str, list[str]] = {}  # session_id -> orders with a succeeded PaymentIntent
    for pi in intents:
        meta = pi.get("metadata") or {}
        session_id = session_of(str(meta.get("purchase_reference") or ""))
        if session_id and pi.get("status") == "succeeded":
            charged.setdefault(session_id, []).append(str(meta.get("order_id")))
    wrong: list[dict[str, Any]] = []
    checked = 0
    for op in ops:
        if not op.session_id or op.outcome == UNRESOLVED:
            continue
        checked += 1
        tenant = world.tenants[op.tenant]
        answer = await world.gateway.until_definite(
            "GET", f"{SESSIONS}/{op.session_id}", key=tenant.sdk_key, deadline=deadline, stats=stats
        )
        state = body_of(answer)
        completed = answer.status == 200 and state.get("status") == "completed"
        paid_order = await _paid_order(world, tenant, str(state.get("order_id") or ""), deadline, stats)
        problems = []
        if answer.status != 200:
            problems.append(f"the partner's read answered {answer.status}")
        if completed and paid_order is None:
            problems.append("completed, but its order is not paid")
        if completed and paid_order is not None and paid_order != state.get("transaction_id"):
            problems.append("completed with another transaction than its order's")
        if len(charged.get(op.session_id, [])) > 1:
            problems.append("charged more than once")
        elif charged.get(op.session_id) and not (completed and state.get("order_id") in charged[op.session_id]):
            problems.append("a charged order, but the session does not read completed with it")
        if op.outcome == ACKED and (state.get("order_id"), state.get("transaction_id")) != (
            op.order_id,
            op.transaction_id,
        ):
            problems.append("not completed with the order and transaction the client was told")
        if op.outcome == REFUSED and completed:
            problems.append("completed, but the client was told it failed")
        if problems:
            wrong.append(
                {**op.summary(), "problems": problems, "session": state, "charged": charged.get(op.session_id)}
            )
    return checked, wrong


async def _paid_order(world: World, tenant: Tenant, order_id: str, deadline: float, stats: Stats) -> str | None:
    """The transaction of the order if it is paid, else None."""
    if not order_id:
        return None
    answer = await world.gateway.until_definite(
        "GET", ORDER, key=tenant.sdk_key, params={"order_id": order_id}, deadline=deadline, stats=stats
    )
    b = body_of(answer)
    if answer.status == 200 and b.get("status") in ("completed", "refunded", "disputed_lost"):
        return str(b.get("transaction_id") or "")
    return None
