"""The fault suite's check of subscriptions, proved able to fail: subscriptions renewed day by day
on the moved clock until their credit runs out (three charges, a past_due, its retries, the
cancel) are clean, with every renewal in the model and its item.purchased delivered; and a second
charge of a period (an item purchase of the plan for the subscriber under another key, as a
double renewal would be) is caught (see test_faults.py for the rest of the suite)."""

from __future__ import annotations

import datetime
import json
import time

from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from faults import subscriptions
from faults.checks import Checker
from faults.flows import Credit, body_of
from faults.model import ACKED
from faults.workload import Settings, Workload
from services.common import grpcutil
from tests import subscriptions_support as ss
from tests.helpers import eventually


async def test_subscriptions_renewed_to_their_end_are_clean_and_a_second_charge_of_a_period_is_caught(
    stack: Stack,
) -> None:
    settings = Settings(tenants=1, players_per_tenant=1, replay_max=40, check_deadline_s=60, webhook_bound_s=10)
    async with Workload(stack, settings) as wl:
        checker = Checker(wl.world, wl.receivers, stack, replay_max=settings.replay_max)
        setup = await wl.setup()
        (t0,) = wl.world.tenants
        start = datetime.datetime(2089, 1, 1, tzinfo=datetime.UTC)
        await ss.set_clock(stack, start)
        made = [await subscriptions.Subscription().run(wl.world, "sabotage", tenant=t0) for _ in range(3)]
        assert [op.outcome for op in made] == [ACKED] * 3, [op.summary() for op in made]
        # Day by day (the retries at due + 1 h, 1 day, 3 days): three charges, then the end.
        for day in range(1, 9):
            await ss.set_clock(stack, start + datetime.timedelta(days=day, hours=2))
            await ss.renew(stack)

        async def ended() -> bool:
            views = []
            for op in made:
                a = await wl.gateway.until_definite(
                    "GET", f"/api/subscriptions/{op.subscription_id}", key=t0.sdk_key, deadline=time.monotonic() + 10
                )
                views.append(body_of(a))
            return all((v["status"], v["periods_paid"]) == ("cancelled", 3) for v in views)

        assert await eventually(ended, timeout_s=30)
        ops = [op for op in wl.world.model.ops if op.phase == "sabotage"]
        clean = await checker.run(phase_ops=[*setup, *ops], deadline_s=60, webhook_bound_s=10)
        assert clean.violations == 0 and clean.subscriptions_checked == 3, clean.summary()
        renewals = [op for op in wl.world.model.ops if op.flow == subscriptions.RENEWAL_FLOW]
        assert sorted(op.subscription_id for op in renewals) == sorted([op.subscription_id for op in made] * 2)
        price = {op.subscription_id: op.delta_minor for op in made}
        assert all(op.delta_minor == price[op.subscription_id] for op in renewals)

        # A period charged twice: the plan bought for the first subscriber under another key.
        victim = made[0]
        credit = await Credit(amount_minor_choices=(-victim.delta_minor,)).run(
            wl.world, "forged", target=(t0, victim.player)
        )
        assert credit.outcome == ACKED, credit.summary()
        channel = grpcutil.channel(stack.env["INVO_LEDGER_ADDR"])
        try:
            await grpcutil.call(
                ledger_pb2_grpc.LedgerServiceStub(channel).PurchaseItem,
                ledger_pb2.PurchaseItemRequest(
                    tenant_id=t0.tenant_id,
                    player_email=victim.player,
                    item_id="faults-daily",
                    item_name="Faults Daily",
                    price_minor=-victim.delta_minor,
                    quantity=1,
                    idempotency=ledger_pb2.Idempotency(namespace="subscriptions", key=f"{victim.subscription_id}:x"),
                    metadata_json=json.dumps({"subscription_id": victim.subscription_id, "period": 2}),
                    network_fee_bps=1000,
                    currency_name="Fault Coins",
                ),
                timeout_s=30,
            )
        finally:
            await channel.close()
        found = await checker.run(phase_ops=[credit], deadline_s=8, webhook_bound_s=1)

    assert [w["subscription_id"] for w in found.subscriptions] == [victim.subscription_id], found.subscriptions
    assert found.subscriptions[0]["problems"][0] == "4 charges in the ledger for periods_paid 3", found.subscriptions
