"""The money flows the network has today, each one generator of operations: an operator's credit,
an item purchase, a currency purchase by card (charged or declined), and one through 3-D Secure
(the challenge passed or failed, then confirm-payment). Hosted checkout is `faults.checkout`,
operators' refunds `faults.refunds`, transfers between tenants `faults.transfers`, partner payouts
`faults.payouts`.

A flow does what a partner's backend does (one request retried with the same key until a definite
answer, see `faults.client`) and records in the `Model` what the answer promised. A later flow
(transfers, payouts) is one more class with `name` and `run`, added to `workload.FLOWS`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any, Protocol

from faults.client import Answer, Gateway, Stats
from faults.model import ABANDONED, ACKED, REFUSED, UNRESOLVED, Model, Op, Replay, minor
from faults.processor import Processor

ITEM = "/api/item-purchases/purchase-item"
PURCHASE = "/api/currency-purchases/purchase-currency"
CONFIRM = "/api/currency-purchases/confirm-payment"
ORDER = "/api/currency-purchases/order-details"
CREDIT = "/admin/players/credit"
MINOR_PER_CENT = 10  # 1 USD = 10 units = 1,000 minor units (services/common/money.py)
CONFIRM_REQUIRES_ACTION_MAX = 20  # confirm-payment answering "challenge not done" after we did it: then ask the order


@dataclasses.dataclass
class Tenant:
    index: int
    tenant_id: str
    sdk_key: str
    signing_secret: str
    players: list[str]


@dataclasses.dataclass
class World:
    """What every flow needs: the clients, the tenants and players, the record, the randomness."""

    gateway: Gateway
    processor: Processor
    tenants: list[Tenant]
    model: Model
    rng: random.Random
    op_deadline_s: float
    processor_stats: Stats  # the cardholder's calls to the processor, apart from the gateway's
    # The workload's ticker of the subscriptions service's clock (faults.subscriptions.Ticker;
    # None: nothing moves the clock, as in a test that moves it itself).
    subscription_clock: Any = None

    def pick(self) -> tuple[Tenant, str]:
        tenant = self.rng.choice(self.tenants)
        return tenant, self.rng.choice(tenant.players)


class Flow(Protocol):
    name: str

    async def run(self, world: World, phase: str) -> Op: ...


def settle(op: Op, answer: Answer) -> bool:
    """Record the answer's bookkeeping; False when there was no definite answer."""
    op.attempts += answer.attempts
    op.indefinite += answer.indefinite
    op.elapsed_s += answer.elapsed_s
    op.status = answer.status
    op.error_code = answer.error_code
    op.acked_at = time.monotonic()
    if not answer.definite:
        op.outcome = UNRESOLVED
        return False
    return True


def body_of(answer: Answer) -> dict[str, Any]:
    return answer.body if isinstance(answer.body, dict) else {}


class Credit:
    """An operator credits a player (the admin API, with an idempotency key): `balance.adjusted`."""

    name = "credit"

    def __init__(self, amount_minor_choices: tuple[int, ...] = (500, 1000, 2500)) -> None:
        self.amounts = amount_minor_choices

    async def run(self, world: World, phase: str, *, target: tuple[Tenant, str] | None = None) -> Op:
        tenant, player = target or world.pick()
        amount = world.rng.choice(self.amounts)
        op = world.model.new(phase=phase, flow=self.name, tenant=tenant.index, player=player)
        body = {
            "tenant_id": tenant.tenant_id,
            "player_email": player,
            "amount": f"{amount // 100}.{amount % 100:02d}",
            "reason": f"faults credit {op.key}",  # unique: it names the operation in balance.adjusted
            "idempotency_key": op.key,
        }
        deadline = time.monotonic() + world.op_deadline_s
        answer = await world.gateway.until_definite("POST", CREDIT, admin=True, body=body, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status == 200 and b.get("transaction_id"):
            op.outcome, op.transaction_id, op.delta_minor = ACKED, str(b["transaction_id"]), amount
            op.events = [("balance.adjusted", body["reason"])]
            op.replay = Replay(
                "POST", CREDIT, body, tenant.index, admin=True, fields={"transaction_id": op.transaction_id}
            )
        else:
            op.outcome = REFUSED
        return op


class ItemPurchase:
    """A player buys an item: a debit split between the partner and the network; `item.purchased`."""

    name = "item_purchase"
    PRICES_MINOR = (1, 35, 100, 250)

    async def run(self, world: World, phase: str) -> Op:
        tenant, player = world.pick()
        price, quantity = world.rng.choice(self.PRICES_MINOR), world.rng.randint(1, 3)
        op = world.model.new(phase=phase, flow=self.name, tenant=tenant.index, player=player)
        body = {
            "player_email": player,
            "item_id": f"sword-{price}",
            "item_name": "Fault-tolerant Sword",
            "price": f"{price // 100}.{price % 100:02d}",
            "quantity": quantity,
            "idempotency_key": op.key,
        }
        deadline = time.monotonic() + world.op_deadline_s
        answer = await world.gateway.until_definite("POST", ITEM, key=tenant.sdk_key, body=body, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status == 200 and b.get("transaction_id"):
            op.outcome, op.transaction_id, op.delta_minor = ACKED, str(b["transaction_id"]), -price * quantity
            if minor(b.get("total", "0")) != price * quantity:
                op.note = f"answered total {b.get('total')} for {quantity} x {body['price']}"
            op.events = [("item.purchased", op.transaction_id)]
            fields = {"transaction_id": op.transaction_id, "new_balance": b.get("new_balance"), "duplicate": True}
            op.replay = Replay("POST", ITEM, body, tenant.index, fields=fields)
        else:
            # A refusal (402 INSUFFICIENT_BALANCE) is not stored under the key: a replay could
            # now succeed, so it is not replayed. The ledger's entries prove it moved nothing.
            op.outcome = REFUSED
        return op


class CardPurchase:
    """A currency purchase by card through the direct API: charged (`purchase.completed`) or
    declined (402 CARD_DECLINED with its order: `purchase.failed`)."""

    def __init__(self, name: str, card: str, usd_cents: int = 100) -> None:
        self.name = name
        self.card = card
        self.usd_cents = usd_cents

    async def run(self, world: World, phase: str) -> Op:
        tenant, player = world.pick()
        op = world.model.new(phase=phase, flow=self.name, tenant=tenant.index, player=player)
        body = purchase_body(player, self.usd_cents, self.card, op.key)
        deadline = time.monotonic() + world.op_deadline_s
        answer = await world.gateway.until_definite("POST", PURCHASE, key=tenant.sdk_key, body=body, deadline=deadline)
        if settle(op, answer):
            record_purchase_answer(op, answer, tenant, body, self.usd_cents)
        return op


class ThreeDSecurePurchase:
    """A currency purchase that needs 3-D Secure: `requires_action`, the cardholder passes or
    fails the challenge at the processor, then confirm-payment (or the processor's webhook) settles it."""

    def __init__(self, name: str, result: str, usd_cents: int = 200) -> None:
        self.name = name
        self.result = result  # "succeed" or "fail"
        self.usd_cents = usd_cents

    async def run(self, world: World, phase: str) -> Op:
        tenant, player = world.pick()
        op = world.model.new(phase=phase, flow=self.name, tenant=tenant.index, player=player)
        body = purchase_body(player, self.usd_cents, "pm_card_authenticationRequired", op.key)
        deadline = time.monotonic() + world.op_deadline_s
        answer = await world.gateway.until_definite("POST", PURCHASE, key=tenant.sdk_key, body=body, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        if answer.status != 200 or b.get("status") != "requires_action":
            record_purchase_answer(op, answer, tenant, body, self.usd_cents)
            return op
        op.order_id, pi = str(b.get("order_id") or ""), str(b.get("payment_intent_id") or "")
        # Whatever happens next, the order may end cancelled or failed: its event may come.
        op.allowed_events = [("purchase.failed", op.order_id)]
        challenge = await world.processor.three_d_secure(
            pi, self.result, deadline=deadline, stats=world.processor_stats
        )
        if challenge.status != 200:
            op.note = f"3-D Secure control answered {challenge.status}: {challenge.body!r:.200}"
        confirm = {"payment_intent_id": pi, "order_id": op.order_id}
        for i in range(CONFIRM_REQUIRES_ACTION_MAX):
            answer = await world.gateway.until_definite(
                "POST", CONFIRM, key=tenant.sdk_key, body=confirm, deadline=deadline
            )
            if not settle(op, answer) or answer.error_code != "PAYMENT_REQUIRES_ACTION":
                break
            await asyncio.sleep(min(1.0, 0.05 * 2**i))  # the processor's word may still be on its way
        if not answer.definite:
            return op
        b = body_of(answer)
        if answer.status == 200 and b.get("transaction_id"):
            op.outcome, op.transaction_id = ACKED, str(b["transaction_id"])
            op.delta_minor = self.usd_cents * MINOR_PER_CENT
            op.events = [("purchase.completed", op.order_id)]
            op.allowed_events = []
            op.replay = Replay(
                "POST",
                CONFIRM,
                confirm,
                tenant.index,
                fields={"transaction_id": op.transaction_id, "already_processed": True},
            )
        elif answer.status == 402:
            op.outcome = REFUSED
            op.events = [("purchase.failed", op.order_id)]
            op.allowed_events = []
            op.replay = Replay("POST", CONFIRM, confirm, tenant.index, status=402, fields={"error_code": op.error_code})
        else:
            op.note = (op.note + f"; confirm-payment answered {answer.status} {answer.error_code}").lstrip("; ")
            await self._from_order(world, tenant, op, deadline)
        return op

    async def _from_order(self, world: World, tenant: Tenant, op: Op, deadline: float) -> None:
        """confirm-payment did not settle it (the processor forgot the challenge, say): the order's
        details are the other authoritative read (the seed), so the partner believes them."""
        answer = await world.gateway.until_definite(
            "GET", ORDER, key=tenant.sdk_key, params={"order_id": op.order_id}, deadline=deadline
        )
        b = body_of(answer)
        if answer.status == 200 and b.get("status") == "completed" and b.get("transaction_id"):
            op.outcome, op.transaction_id = ACKED, str(b["transaction_id"])
            op.delta_minor = self.usd_cents * MINOR_PER_CENT
            op.events, op.allowed_events = [("purchase.completed", op.order_id)], []
        elif answer.status == 200 and b.get("status") in ("failed", "cancelled"):
            op.outcome = REFUSED
            op.events, op.allowed_events = [("purchase.failed", op.order_id)], []
        else:
            # Left open: nothing was acknowledged, so nothing may move; if the order settles later
            # its events may come, and the ledger check holds the money to it.
            op.outcome = ABANDONED
            op.note += f"; order {b.get('status') or answer.status}"
            op.allowed_events.append(("purchase.completed", op.order_id))


def purchase_body(player: str, usd_cents: int, card: str, reference: str) -> dict[str, Any]:
    return {
        "player_email": player,
        "usd_amount": f"{usd_cents // 100}.{usd_cents % 100:02d}",
        "payment_method_id": card,
        "purchase_reference": reference,
    }


def record_purchase_answer(op: Op, answer: Answer, tenant: Tenant, body: dict[str, Any], usd_cents: int) -> None:
    """A definite answer of purchase-currency (no 3-D Secure step left)."""
    b = body_of(answer)
    op.order_id = str(b.get("order_id") or "")
    if answer.status == 200 and b.get("status") == "success" and b.get("transaction_id"):
        op.outcome, op.transaction_id = ACKED, str(b["transaction_id"])
        op.delta_minor = usd_cents * MINOR_PER_CENT
        if minor(b.get("currency_amount", "0")) != op.delta_minor:
            op.note = f"answered currency_amount {b.get('currency_amount')} for {body['usd_amount']} USD"
        op.events = [("purchase.completed", op.order_id)]
        fields = {"status": "success", "transaction_id": op.transaction_id, "duplicate": True}
        op.replay = Replay("POST", PURCHASE, body, tenant.index, fields=fields)
        return
    op.outcome = REFUSED
    if answer.status == 402 and op.order_id:
        # A declined card is an order that failed: announced, and answered the same on a replay.
        op.events = [("purchase.failed", op.order_id)]
        op.replay = Replay(
            "POST",
            PURCHASE,
            body,
            tenant.index,
            status=402,
            fields={"error_code": op.error_code, "order_id": op.order_id},
        )
    elif op.order_id:
        op.allowed_events = [("purchase.failed", op.order_id)]
