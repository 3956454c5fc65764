"""The fault suite's check of payouts, proved able to fail: payouts driven to each of their ends
are clean, and a second payment order at the ACH provider, a second settlement of a payout's
revenue, and a payout left approved past the sweep's time are caught (see test_faults.py for the
rest of the suite)."""

from __future__ import annotations

import time
from decimal import Decimal

import aiohttp
import asyncpg
import modern_treasury
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from faults import payouts
from faults.checks import Checker
from faults.model import ACKED
from faults.refunds import usd
from faults.workload import Settings, Workload
from services.common import grpcutil
from services.common.config import Settings as InvoSettings


async def test_payouts_to_each_end_are_clean_and_a_double_payment_and_a_payout_left_approved_are_caught(
    stack: Stack,
) -> None:
    settings = Settings(tenants=2, players_per_tenant=1, replay_max=40, check_deadline_s=30, webhook_bound_s=10)
    async with Workload(stack, settings) as wl:
        checker = Checker(wl.world, wl.receivers, stack, replay_max=settings.replay_max)
        setup = await wl.setup()
        t0, t1 = wl.world.tenants
        plans = ("completed", "failed", "returned", "rejected", "cancelled")
        mains = [await payouts.Payout(f"payout_{plan}", plan).run(wl.world, "sabotage", tenant=t0) for plan in plans]
        stuck = await payouts.Payout("payout", "completed").run(wl.world, "sabotage", tenant=t1)
        paid = mains[0]
        by_payout = wl.world.model.payouts()
        reviews = [payouts.APPROVE_FLOW] * 3 + [payouts.REJECT_FLOW, payouts.CANCEL_FLOW, payouts.APPROVE_FLOW]
        assert [[(op.flow, op.outcome) for op in by_payout[m.payout_id]] for m in (*mains, stuck)] == [
            [(m.flow, ACKED), (review, ACKED)] for m, review in zip((*mains, stuck), reviews, strict=True)
        ], [op.summary() for m in (*mains, stuck) for op in by_payout.get(m.payout_id, [m])]
        ops = [op for op in wl.world.model.ops if op.phase == "sabotage"]
        clean = await checker.run(phase_ops=[*setup, *ops], deadline_s=30, webhook_bound_s=10)
        assert clean.violations == 0 and clean.payouts_checked == 6, clean.summary()
        assert clean.replayed == 26 and clean.replays == []  # 2 fundings; each payout's credit, item, request, review
        # Each transition announced once, to the payout's tenant.
        ends = {"completed": ["approved", "processing", "completed"], "failed": ["approved", "processing", "failed"]}
        ends |= {"returned": [*ends["completed"], "returned"], "rejected": ["rejected"], "cancelled": ["cancelled"]}
        told = sorted(k for k, got in wl.receivers.by_key().items() if k[1] == payouts.STATUS_CHANGED and len(got) == 1)
        want = [
            (0, payouts.STATUS_CHANGED, f"{m.payout_id}:{to}")
            for m, p in zip(mains, plans, strict=True)
            for to in ["requested", *ends[p]]
        ] + [(1, payouts.STATUS_CHANGED, f"{stuck.payout_id}:{to}") for to in ["requested", *ends["completed"]]]
        assert told == sorted(want), told
        # Nothing held; paid out what completed and stayed, credited back what was returned.
        rev = await wl.gateway.until_definite("GET", "/api/revenue", key=t0.sdk_key, deadline=time.monotonic() + 10)
        cents = {m.payout_end.partition(" ")[0]: m.usd_cents for m in mains}
        amounts = tuple(rev.body[f"{k}_usd"] for k in ("held", "paid_out", "returned"))
        assert amounts == ("0.00", usd(cents["completed"]), usd(cents["returned"])), rev.body

        # 1. A second payment order at the provider for the completed payout (another key, its
        # metadata), driven to its end: the payouts service rightly ignores an order it did not make.
        env = stack.env
        async with modern_treasury.AsyncModernTreasury(
            organization_id=env["INVO_ACH_ORGANIZATION_ID"],
            api_key=env["INVO_ACH_API_KEY"],
            base_url=env["INVO_ACH_API_BASE"],
            max_retries=0,
        ) as mt:
            second = await mt.payment_orders.create(
                type="ach",
                direction="credit",
                amount=paid.usd_cents,
                currency="USD",
                originating_account_id=env["INVO_ACH_ORIGINATING_ACCOUNT_ID"],
                receiving_account={
                    "account_details": [{"account_number": "123456789"}],
                    "routing_details": [{"routing_number": "021000021", "routing_number_type": "aba"}],
                    "party_name": "Fault Tolerant Games Inc.",
                },
                metadata={"payout_id": paid.payout_id},
                idempotency_key=f"sabotage-{wl.run_id}",
            )
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                env["INVO_ACH_API_BASE"] + "/_sim/advance", json={"payment_order_id": second.id, "to": "end"}
            ) as resp,
        ):
            assert resp.status == 200 and (await resp.json())["status"] == "completed"
        # 2. A second settlement of the same payout: its amount taken from t0's revenue once more, or
        # as much of it as the revenue still holds (the amounts are random; any forged posting is caught).
        available_cents = round(Decimal(rev.body["available_usd"]) * 100)
        assert available_cents > 0, rev.body  # each payout's tenant earned 1.08 times its amount
        amount = min(paid.usd_cents, available_cents) * 10
        channel = grpcutil.channel(env["INVO_LEDGER_ADDR"])
        try:
            await grpcutil.call(
                ledger_pb2_grpc.LedgerServiceStub(channel).Transfer,
                ledger_pb2.TransferRequest(
                    tenant_id=t0.tenant_id,
                    kind="payout_hold",
                    postings=[
                        ledger_pb2.Posting(account=f"tenant:{t0.tenant_id}:revenue", amount_minor=-amount),
                        ledger_pb2.Posting(account="world:payouts", amount_minor=amount),
                    ],
                    idempotency=ledger_pb2.Idempotency(namespace="admin", key=f"sabotage-payout-{wl.run_id}"),
                ),
                timeout_s=30,
            )
        finally:
            await channel.close()
        # 3. t1's completed payout put back to approved under a lease nobody lets go of within the
        # check: the sweep never sends it.
        schema = InvoSettings.from_env(env).schema("payouts")
        conn = await asyncpg.connect(env["INVO_DATABASE_URL"], timeout=10.0)
        try:
            stuck_sql = f'UPDATE "{schema}".payouts SET status = $2, processing_until = $3 WHERE payout_id = $1'
            await conn.execute(stuck_sql.replace("$3", "now() + interval '1 hour'"), stuck.payout_id, "approved")
            found = await checker.run(phase_ops=[paid, stuck], deadline_s=8, webhook_bound_s=1)
        finally:
            await conn.execute(stuck_sql.replace("$3", "NULL"), stuck.payout_id, "completed")
            await conn.close()

    by_payout_found = {w["payout_id"]: w for w in found.payouts}
    assert set(by_payout_found) == {paid.payout_id, "", stuck.payout_id}, found.payouts
    assert by_payout_found[paid.payout_id]["problems"] == ["2 payment orders at the provider for one payout"]
    revenue = by_payout_found[""]
    assert revenue["tenant"] == 0, revenue
    have, expected = revenue["revenue_minor"], revenue["expected_minor"]
    assert {k: have[k] - expected[k] for k in have if have[k] != expected[k]} == {
        "owed": -amount,
        "available": -amount,
        "paid_out": amount,
    }, revenue
    assert by_payout_found[stuck.payout_id]["problems"][0] == "left approved after the sweep had its time", (
        found.payouts
    )
    assert found.ledger["ok"] is True and found.doubled == [] and found.lost == []
    # the second payment order, the second settlement, the payout left approved
    assert found.violations == 3, found.summary()
