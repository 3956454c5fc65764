"""Currency subscriptions in the workload: a subscriber of its own (credited for exactly
PERIODS_FUNDED periods by an operator) subscribes to a daily plan; the workload's clock ticker
moves the subscriptions service's test clock a day on every TICK_S, so renewals happen during
every fault: three charges, then a past_due, its retries and a cancel (payment_failed).

- create (flow `subscription`): one idempotency key per operation, resent on every retry with the
  same body (409 SUBSCRIPTION_IN_PROGRESS is asked again); the answer (201, or 200 `duplicate`)
  names the subscription and its first charge, a debit of the price.
- renewals are the network's own doing: `faults.subscription_checks` holds every subscription to
  at most one charge per period against the ledger, the subscription's `periods_paid` and the
  wallet, and adds each renewal it finds to the model (so the generic checks hold it to exactly
  once and expect its `item.purchased`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from invo.v1 import subscriptions_pb2, subscriptions_pb2_grpc

from faults.flows import Credit, Tenant, World, body_of, settle
from faults.model import ACKED, REFUSED, UNRESOLVED, Op, Replay
from faults.payouts import call
from faults.transfers import backoff, units
from services.common import grpcutil

SUBSCRIPTIONS = "/api/subscriptions"
FLOW = "subscription"
RENEWAL_FLOW = "subscription_renewal"
PERIODS_FUNDED = 3
PRICES_MINOR = (100, 250, 500)
TICK_S = 2.0  # the test clock moves a day this often while the load runs
TICK = datetime.timedelta(days=1)


def api_units(amount_minor: int) -> str:
    """Units as the API writes them ("1", "2.50")."""
    return str(amount_minor // 100) if amount_minor % 100 == 0 else units(amount_minor)


def subscriber(world: World, op_id: int) -> str:
    return f"subscriber-{world.model.run_id}-{op_id}@faults.test"


class Subscription:
    """One subscriber funded for PERIODS_FUNDED daily periods, subscribing once."""

    name = FLOW

    async def run(self, world: World, phase: str, *, tenant: Tenant | None = None) -> Op:
        tenant = tenant or world.rng.choice(world.tenants)
        price = world.rng.choice(PRICES_MINOR)
        player = subscriber(world, len(world.model.ops))
        credit = await Credit(amount_minor_choices=(price * PERIODS_FUNDED,)).run(world, phase, target=(tenant, player))
        if credit.outcome != ACKED:
            return credit
        op = world.model.new(phase=phase, flow=FLOW, tenant=tenant.index, player=player)
        body = {
            "player_email": player,
            "plan_id": "faults-daily",
            "plan_name": "Faults Daily",
            "price": units(price),
            "interval": "day",
            "idempotency_key": op.key,
        }
        deadline = time.monotonic() + world.op_deadline_s
        answer = await call(world, op, "POST", SUBSCRIPTIONS, key=tenant.sdk_key, body=body, deadline=deadline)
        if not settle(op, answer):
            return op
        b = body_of(answer)
        charge = b.get("last_charge") or {}
        if answer.status not in (200, 201) or not b.get("subscription_id") or not charge.get("transaction_id"):
            op.outcome = UNRESOLVED if answer.error_code == "SUBSCRIPTION_IN_PROGRESS" else REFUSED
            return op
        op.outcome, op.subscription_id = ACKED, str(b["subscription_id"])
        op.transaction_id, op.delta_minor = str(charge["transaction_id"]), -price
        if (b.get("status"), b.get("periods_paid"), charge.get("total")) != ("active", 1, api_units(price)):
            op.note = f"created {b.get('status')} with {b.get('periods_paid')} periods, charged {charge.get('total')}"
        op.events = [("item.purchased", op.transaction_id), ("subscription.created", f"{op.subscription_id}:created:1")]
        fields = {"subscription_id": op.subscription_id, "duplicate": True}
        op.replay = Replay("POST", SUBSCRIPTIONS, body, tenant.index, fields=fields)
        return op


class Ticker:
    """The subscriptions service's clock, moved a day every TICK_S while a phase's load runs, on
    from where the last phase left it. `at` is the last time the service confirmed; a refused or
    lost call (the service killed by a fault) is tried at the next tick. The check pins the clock
    to `at` before it reads (`pin`), so what it calls due is what the service calls due."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.at = datetime.datetime.now(datetime.UTC)

    async def _set(self, stub: Any, at: datetime.datetime) -> bool:
        ts = Timestamp()
        ts.FromDatetime(at)
        try:
            await stub.SetTestClock(subscriptions_pb2.SetTestClockRequest(now=ts), timeout=2)
        except (TimeoutError, grpc.RpcError):
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        channel = grpcutil.channel(self.address)  # every replica's address: one killed is skipped
        stub: Any = subscriptions_pb2_grpc.SubscriptionsServiceStub(channel)
        try:
            while not stop.is_set():
                if await self._set(stub, self.at + TICK):
                    self.at += TICK
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=TICK_S)  # the ticker's pace, until the load stops
        finally:
            await channel.close()

    async def pin(self, deadline: float) -> bool:
        """The service's clock set to `at` again (a tick whose answer was lost may have moved it
        on), tried until the deadline; False if it never answered."""
        channel = grpcutil.channel(self.address)
        stub: Any = subscriptions_pb2_grpc.SubscriptionsServiceStub(channel)
        try:
            for i in range(1000):
                if await self._set(stub, self.at):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await backoff(i)  # while the service restarts
            return False
        finally:
            await channel.close()
