"""The bank workload: tenants with webhook receivers, funded players, and paced clients running
the flows' mix through the public gateway while a phase's fault happens.

Tenants are created through the admin API before any fault (creating one is not idempotent, so
its answer must not be lost), each with `webhook_url` at the runner's receiver; every player is
funded by an operator's credit, itself an operation of the model like any other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
import time
from typing import Any

from devstack.devservers import free_port
from devstack.stack import Stack
from faults.checkout import CheckoutPurchase
from faults.client import Gateway, Stats
from faults.flows import CardPurchase, Credit, Flow, ItemPurchase, Tenant, ThreeDSecurePurchase, World
from faults.model import ACKED, Model, Op
from faults.payouts import Payout
from faults.processor import Processor
from faults.receivers import Receivers
from faults.refunds import RefundPurchase
from faults.subscriptions import Subscription, Ticker
from faults.transfers import SELF, SEND, Transfer

SETUP_CONCURRENCY = 16
# Caps far above what the run spends: a cap refusal is a correct answer but tells us nothing.
CAPS = {"hourly_usd": "1000000.00", "daily_usd": "1000000.00", "monthly_usd": "1000000.00"}

# The mix, by weight: mostly item purchases (the ledger's hot path), card purchases with a few
# declines, hosted checkout (a few sessions declined first, then paid on the same session), 3-D
# Secure both ways, operators' credits now and then, a few card purchases refunded by an
# operator (each is two to four operations: the purchase, its refunds, a refusal of one more), and
# transfers to another tenant, self-transfers and sends, mostly claimed, some cancelled before or
# after the PIN (each is two or three operations: the hold, its claim or cancel); and partner
# payouts, each earned first, approved and completed most often, some failing at the bank or
# returned after completing, some rejected by the operator or cancelled by the partner (each is four
# operations: the earner's credit and item purchase, the request, its review or cancel); and daily
# subscriptions, renewed as the ticker moves the subscriptions service's clock (faults.subscriptions).
FLOWS: tuple[tuple[Flow, int], ...] = (
    (ItemPurchase(), 55),
    (CardPurchase("card_purchase", "pm_card_visa"), 20),
    (CardPurchase("card_declined", "pm_card_chargeDeclined"), 4),
    (CheckoutPurchase("checkout"), 8),
    (CheckoutPurchase("checkout_declined_then_paid", ("pm_card_chargeDeclined", "pm_card_visa")), 2),
    (ThreeDSecurePurchase("three_d_secure", "succeed"), 8),
    (ThreeDSecurePurchase("three_d_secure_failed", "fail"), 3),
    (Credit(), 10),
    (RefundPurchase(), 4),
    (Transfer("self_transfer", SELF, "claim"), 4),
    (Transfer("send", SEND, "claim"), 3),
    (Transfer("self_transfer_cancelled", SELF, "cancel"), 1),
    (Transfer("send_cancelled", SEND, "cancel"), 1),
    (Payout("payout", "completed"), 3),
    (Payout("payout_failed", "failed"), 1),
    (Payout("payout_returned", "returned"), 1),
    (Payout("payout_rejected", "rejected"), 1),
    (Payout("payout_cancelled", "cancelled"), 1),
    (Subscription(), 3),
)


@dataclasses.dataclass
class Settings:
    """How big and how long; the defaults are the full suite's."""

    tenants: int = 4
    players_per_tenant: int = 24
    clients: int = 16  # concurrent partner clients: as many operations in flight when the fault hits
    rate_per_s: float = 100.0  # operations started per second, all clients together, at most
    load_s: float = 14.0  # each phase's load, at least
    warm_s: float = 3.0  # load before the fault
    after_heal_s: float = 4.0  # load after the fault healed, at least
    op_deadline_s: float = 90.0  # how long a client retries one operation
    check_deadline_s: float = 180.0  # how long the checks may wait on the network's answers
    webhook_bound_s: float = 60.0  # how long after the load every promised event may take to arrive
    replay_max: int = 300  # acknowledged requests replayed per check
    request_timeout_s: float = 20.0  # one HTTP attempt (a currency purchase waits on the processor)
    funding_minor: int = 100_000  # each player's first credit: 1,000 units
    seed: int = 0


class Workload:
    def __init__(self, stack: Stack, settings: Settings) -> None:
        self.stack = stack
        self.settings = settings
        # The workload's choices, repeatable from --seed; nothing secret is drawn from it.
        self.seed = settings.seed or secrets.randbits(32)  # kept in the result: --seed repeats the choices
        self.rng = random.Random(self.seed)  # noqa: S311
        self.run_id = secrets.token_hex(3)
        self.receivers = Receivers()
        self.gateway = Gateway(
            stack.gateway_url,
            admin_token=stack.env["INVO_ADMIN_TOKEN"],
            request_timeout_s=settings.request_timeout_s,
            rng=self.rng,
            alternates=tuple(stack.gateway_urls[1:]),
        )
        processor = Processor(
            self.gateway,
            base_url=stack.env["INVO_PROCESSOR_API_BASE"],
            secret_key=stack.env.get("INVO_PROCESSOR_SECRET_KEY", ""),
        )
        self.world = World(
            gateway=self.gateway,
            processor=processor,
            tenants=[],
            model=Model(self.run_id),
            rng=self.rng,
            op_deadline_s=settings.op_deadline_s,
            processor_stats=Stats("processor"),
        )
        self.ticker = Ticker(stack.env["INVO_SUBSCRIPTIONS_ADDR"])
        self.world.subscription_clock = self.ticker
        self.flows: list[Flow] = [f for f, _ in FLOWS]
        self.weights: list[int] = [w for _, w in FLOWS]

    async def __aenter__(self) -> Workload:
        await self.gateway.__aenter__()
        await self.receivers.start(free_port())
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.receivers.stop()
        finally:
            await self.gateway.__aexit__(*exc)

    async def setup(self) -> list[Op]:
        for index in range(self.settings.tenants):
            body: dict[str, Any] = {
                "name": f"faults {self.run_id} #{index}",
                "currency_name": "Fault Coins",
                "webhook_url": self.receivers.url(index),
                "spending_caps": CAPS,
                "rate_limit_per_second": 100_000,
            }
            status, out, _ = await self.gateway.once(
                "POST", "/admin/tenants", headers=self.gateway.headers(admin=True), body=body
            )
            if status != 201 or not isinstance(out, dict):
                raise RuntimeError(f"could not create a tenant: {status} {out!r:.300}")
            players = [f"p{n}-{self.run_id}-{index}@faults.test" for n in range(self.settings.players_per_tenant)]
            tenant = Tenant(
                index, str(out["tenant_id"]), str(out["sdk_key"]), str(out["webhook_signing_secret"]), players
            )
            self.receivers.register(index, tenant.tenant_id, tenant.signing_secret)
            self.world.tenants.append(tenant)
        funding = Credit(amount_minor_choices=(self.settings.funding_minor,))
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def fund(tenant: Tenant, player: str) -> Op:
            async with gate:
                return await funding.run(self.world, "setup", target=(tenant, player))

        ops = await asyncio.gather(*(fund(t, p) for t in self.world.tenants for p in t.players))
        refused = [op.summary() for op in ops if op.outcome != ACKED]
        if refused:
            raise RuntimeError(f"funding refused: {refused[:3]}")
        return list(ops)

    def start(self, phase: str, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """The clients, running the mix until `stop` is set; each finishes the operation it is in."""
        interval_s = self.settings.clients / self.settings.rate_per_s

        async def client(n: int) -> None:
            next_at = time.monotonic() + interval_s * n / self.settings.clients  # staggered starts
            while not stop.is_set():
                delay_s = next_at - time.monotonic()
                if delay_s > 0:
                    # Pacing, not waiting on the network: a client starts an operation every interval_s.
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay_s)
                        return
                    except TimeoutError:
                        pass
                next_at = max(next_at + interval_s, time.monotonic())
                flow = self.rng.choices(self.flows, weights=self.weights)[0]
                await flow.run(self.world, phase)

        clients = [asyncio.ensure_future(client(n)) for n in range(self.settings.clients)]
        # Renewals during the load: the subscriptions service's clock moves a day every few seconds.
        return [*clients, asyncio.ensure_future(self.ticker.run(stop))]

    def ops_of(self, phase: str) -> list[Op]:
        return [op for op in self.world.model.ops if op.phase == phase]
