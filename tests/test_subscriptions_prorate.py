"""A cancel at once with `prorate`: the unused part of the paid period back to the player, taken
from the partner's revenue and the network's fee as the period's charge split them (whole seconds,
each part rounded down), once, whatever the retries; nothing to refund at the period's end or in
a trial; and a prorated cancel a crash interrupted after its decision (or after the ledger's
refund) is finished by the renewal loop with exactly one refund. The ledger check after each."""

from __future__ import annotations

import datetime
from typing import Any

import asyncpg
import pytest
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from services.common import errors, grpcutil
from services.common.config import Settings
from tests import subscriptions_support as ss
from tests.helpers import Api, eventually
from tests.subscriptions_support import _ledger_checked

__all__ = ["_ledger_checked"]  # the autouse fixture: the ledger check after each test

UTC = datetime.UTC


async def cancel(api: Api, t: dict[str, Any], sid: str, **body: Any) -> Any:
    return await api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json=body)


async def revenue_owed(api: Api, t: dict[str, Any]) -> str:
    resp = await api.get("/api/revenue", key=t["sdk_key"])
    assert resp.status == 200, resp
    return str(resp.body["owed_units"])


async def test_half_a_month_unused_is_half_the_charge_back_once(api: Api, stack: Stack) -> None:
    await ss.set_clock(stack, datetime.datetime(2070, 1, 1, tzinfo=UTC))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "25")
    created = await ss.create(api, t, ss.body(email, price="10"))
    assert created.status == 201 and created.body["refund"] is None, created
    sid = created.body["subscription_id"]
    assert await ss.balance(api, t, email) == "15" and await revenue_owed(api, t) == "9"
    # January has 31 days: at 15 days 12 hours, exactly half of the period is left.
    await ss.set_clock(stack, datetime.datetime(2070, 1, 16, 12, tzinfo=UTC))
    done = await cancel(api, t, sid, at_once=True, prorate=True)
    assert done.status == 200, done
    refund = done.body["refund"]
    assert refund == {
        "period": 1,
        "amount": "5",
        "partner_amount": "4.50",
        "network_fee": "0.50",
        "transaction_id": refund["transaction_id"],
    }, done.body
    assert (done.body["status"], done.body["cancelled_at"], done.body["duplicate"]) == (
        "cancelled",
        "2070-01-16T12:00:00Z",
        False,
    )
    assert await ss.balance(api, t, email) == "20" and await revenue_owed(api, t) == "4.50"
    # Again, with or without prorate: the same subscription, no second refund.
    for again in ({"at_once": True, "prorate": True}, {"at_once": True}, {}):
        replay = await cancel(api, t, sid, **again)
        assert replay.status == 200 and replay.body["duplicate"] is True and replay.body["refund"] == refund, replay
    assert await ss.balance(api, t, email) == "20"
    [ended] = [e for e in await ss.events(stack, t["tenant_id"], sid, 2) if e["event_type"] == "subscription.cancelled"]
    assert ended["data"]["refund"] == refund and ended["data"]["status"] == "cancelled", ended
    entries = await api.get("/api/ledger/entries?limit=1000", key=t["sdk_key"])
    kinds = [e["kind"] for e in entries.body["data"] if e["transaction_id"] == refund["transaction_id"]]
    assert kinds and set(kinds) == {"subscription_refund"}, entries.body


async def test_each_part_is_rounded_down_and_they_add_up(api: Api, stack: Stack) -> None:
    await ss.set_clock(stack, datetime.datetime(2071, 3, 1, tzinfo=UTC))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "1")
    created = await ss.create(api, t, ss.body(email, price="0.35", interval="week"))
    assert created.status == 201 and created.body["last_charge"]["partner_amount"] == "0.32", created
    # Two thirds of the week left: the partner's 32 gives 21 (21.33 rounded down), the fee's 3 gives 2.
    await ss.set_clock(stack, datetime.datetime(2071, 3, 3, 8, tzinfo=UTC))
    done = await cancel(api, t, created.body["subscription_id"], at_once=True, prorate=True)
    assert done.status == 200, done
    r = done.body["refund"]
    assert (r["amount"], r["partner_amount"], r["network_fee"]) == ("0.23", "0.21", "0.02"), r
    assert await ss.balance(api, t, email) == "0.88"  # 1 - 0.35 + 0.23


async def test_prorate_at_the_period_end_or_in_a_trial_refunds_nothing(api: Api, stack: Stack) -> None:
    await ss.set_clock(stack, datetime.datetime(2072, 5, 1, tzinfo=UTC))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "25")
    paid = await ss.create(api, t, ss.body(email, price="10"))
    trial = await ss.create(api, t, ss.body(email, price="10", trial_days=7))
    assert (paid.status, trial.status) == (201, 201), (paid, trial)
    # At the period's end nothing is left unused: nothing to refund.
    later = await cancel(api, t, paid.body["subscription_id"], prorate=True)
    assert later.status == 200 and later.body["cancel_at_period_end"] is True and later.body["refund"] is None, later
    assert later.body["status"] == "active" and await ss.balance(api, t, email) == "15"
    done = await cancel(api, t, trial.body["subscription_id"], at_once=True, prorate=True)
    assert done.status == 200 and done.body["status"] == "cancelled" and done.body["refund"] is None, done
    assert await ss.balance(api, t, email) == "15"
    await cancel(api, t, paid.body["subscription_id"], at_once=True)


@pytest.mark.parametrize("ledger_first", [False, True], ids=["crash-after-decision", "crash-after-ledger"])
async def test_a_prorated_cancel_a_crash_interrupted_is_finished_once_by_the_loop(
    api: Api, stack: Stack, ledger_first: bool
) -> None:
    """The state a crash leaves, made by hand: the refund decided and stored (and, in the second
    case, already made in the ledger), the subscription not cancelled. The loop finishes it."""
    await ss.set_clock(stack, datetime.datetime(2073 + ledger_first, 7, 1, tzinfo=UTC))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "25")
    created = await ss.create(api, t, ss.body(email, price="10"))
    sid = created.body["subscription_id"]
    decided_at = datetime.datetime(2073 + ledger_first, 7, 16, 12, tzinfo=UTC)  # half of July left
    await ss.set_clock(stack, decided_at)
    if ledger_first:
        channel = grpcutil.channel(stack.env["INVO_LEDGER_ADDR"])
        try:
            await grpcutil.call(
                ledger_pb2_grpc.LedgerServiceStub(channel).RefundSubscriptionPeriod,
                ledger_pb2.RefundSubscriptionPeriodRequest(
                    tenant_id=t["tenant_id"],
                    player_email=email,
                    subscription_id=sid,
                    period=1,
                    partner_minor=450,
                    fee_minor=50,
                ),
                timeout_s=10,
            )
        finally:
            await channel.close()
    schema = Settings.from_env(stack.env).schema("subscriptions")
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10)
    try:
        await conn.execute(
            f'UPDATE "{schema}".subscriptions SET refund_period = 1, refund_partner_minor = 450,'
            " refund_fee_minor = 50, refund_decided_at = $2, next_attempt_at = $2 WHERE subscription_id = $1",
            sid,
            decided_at,
        )
    finally:
        await conn.close()
    await ss.renew(stack)

    async def finished() -> dict[str, Any]:
        s = await ss.get(api, t, sid)
        return s if s["status"] == "cancelled" else {}

    s = await eventually(finished)
    assert s["refund"]["amount"] == "5" and s["cancelled_at"] == "2073-07-16T12:00:00Z".replace(
        "2073", str(2073 + ledger_first)
    ), s
    assert await ss.balance(api, t, email) == "20"  # one refund, however the crash fell


async def test_the_ledger_holds_a_refund_to_the_periods_charge(api: Api, stack: Stack) -> None:
    """RefundSubscriptionPeriod straight to the ledger: a period never charged, or parts over what
    its charge split, are refused and move nothing."""
    await ss.set_clock(stack, datetime.datetime(2075, 2, 1, tzinfo=UTC))
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "25")
    sid = (await ss.create(api, t, ss.body(email, price="10"))).body["subscription_id"]
    channel = grpcutil.channel(stack.env["INVO_LEDGER_ADDR"])
    try:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for period, partner, fee, code in ((2, 1, 0, "PREREQUISITE_NOT_FOUND"), (1, 901, 0, "PREREQUISITE_MISMATCH")):
            request = ledger_pb2.RefundSubscriptionPeriodRequest(
                tenant_id=t["tenant_id"],
                player_email=email,
                subscription_id=sid,
                period=period,
                partner_minor=partner,
                fee_minor=fee,
            )
            with pytest.raises(errors.InvoError) as refused:
                await grpcutil.call(stub.RefundSubscriptionPeriod, request, timeout_s=10)
            assert refused.value.error_code == code, refused.value
    finally:
        await channel.close()
    assert await ss.balance(api, t, email) == "15"
    await cancel(api, t, sid, at_once=True)
