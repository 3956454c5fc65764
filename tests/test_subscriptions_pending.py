"""What an actor leaves unfinished is finished first by the next one (the review's findings): a
renewal's charge sent to the ledger without a definite answer (a timeout, a crash) is sent again
under the same key before a cancel acts, so the cancel never overtakes a charge already on its way
(landed late: recorded, no second debit; never landed: made once, it was due before the cancel);
and a prorated cancel decided but not made is made by a plain cancel that comes next. The states a
crash leaves are made by hand in the database (and, for "landed late", in the ledger); the ledger
check after each."""

from __future__ import annotations

import datetime
import json
from typing import Any

import asyncpg
import pytest
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from services.common import grpcutil
from services.common.config import Settings
from tests import subscriptions_support as ss
from tests.helpers import Api
from tests.subscriptions_support import _ledger_checked

__all__ = ["_ledger_checked"]  # the autouse fixture: the ledger check after each test

UTC = datetime.UTC


async def sql(stack: Stack, statement: str, *args: Any) -> None:
    schema = Settings.from_env(stack.env).schema("subscriptions")
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10)
    try:
        await conn.execute(statement.replace("subscriptions.", f'"{schema}".'), *args)
    finally:
        await conn.close()


async def charge_in_ledger(stack: Stack, t: dict[str, Any], email: str, sid: str, period: int) -> str:
    """The renewal's own request (as the service builds it), applied in the ledger: a charge that
    landed after its sender gave up."""
    channel = grpcutil.channel(stack.env["INVO_LEDGER_ADDR"])
    try:
        r = await grpcutil.call(
            ledger_pb2_grpc.LedgerServiceStub(channel).PurchaseItem,
            ledger_pb2.PurchaseItemRequest(
                tenant_id=t["tenant_id"],
                player_email=email,
                item_id="gold",
                item_name="Gold Pass",
                price_minor=1000,
                quantity=1,
                idempotency=ledger_pb2.Idempotency(namespace="subscriptions", key=f"{sid}:{period}"),
                metadata_json=json.dumps({"subscription_id": sid, "period": period}),
                network_fee_bps=1000,
                currency_name="Gems",
            ),
            timeout_s=10,
        )
    finally:
        await channel.close()
    return str(r.transaction_id)


@pytest.mark.parametrize("landed", [True, False], ids=["charge-landed-late", "charge-never-landed"])
async def test_a_cancel_finishes_a_charge_already_on_its_way_first(api: Api, stack: Stack, landed: bool) -> None:
    year = 2081 + landed
    start, due = datetime.datetime(year, 3, 1, tzinfo=UTC), datetime.datetime(year, 4, 1, tzinfo=UTC)
    await ss.set_clock(stack, start)
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "30")
    created = await ss.create(api, t, ss.body(email, price="10"))
    sid = created.body["subscription_id"]
    await ss.set_clock(stack, due + datetime.timedelta(minutes=5))
    # The renewal of period 2 marked and sent; its sender gone before any answer (its lease over).
    await sql(
        stack,
        "UPDATE subscriptions.subscriptions SET pending_period = 2, pending_fee_bps = 1000,"
        " pending_currency_name = 'Gems', processing_until = NULL, next_attempt_at = $2 WHERE subscription_id = $1",
        sid,
        datetime.datetime(year + 5, 1, 1, tzinfo=UTC),  # out of the loop's way: the cancel comes first
    )
    txn = await charge_in_ledger(stack, t, email, sid, 2) if landed else None
    done = await api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json={"at_once": True})
    assert done.status == 200 and done.body["status"] == "cancelled", done
    # The period on its way is recorded (its one charge), then the cancel: never the other order.
    assert done.body["periods_paid"] == 2 and done.body["last_charge"]["period"] == 2, done.body
    if txn is not None:
        assert done.body["last_charge"]["transaction_id"] == txn, done.body
    assert await ss.balance(api, t, email) == "10"  # 30 - two periods, never three
    kinds = [e["event_type"] for e in await ss.events(stack, t["tenant_id"], sid, 3)]
    assert kinds == ["subscription.created", "subscription.renewed", "subscription.cancelled"], kinds


async def test_a_plain_cancel_makes_a_prorated_cancel_already_decided(api: Api, stack: Stack) -> None:
    start = datetime.datetime(2083, 1, 1, tzinfo=UTC)
    await ss.set_clock(stack, start)
    t = await ss.tenant(api)
    email = await ss.funded(api, t, "25")
    created = await ss.create(api, t, ss.body(email, price="10"))
    sid = created.body["subscription_id"]
    decided = datetime.datetime(2083, 1, 16, 12, tzinfo=UTC)  # half of January left: 4.50 + 0.50
    await ss.set_clock(stack, decided)
    await sql(
        stack,
        "UPDATE subscriptions.subscriptions SET refund_period = 1, refund_partner_minor = 450, refund_fee_minor = 50,"
        " refund_decided_at = $2, next_attempt_at = $3 WHERE subscription_id = $1",
        sid,
        decided,
        datetime.datetime(2090, 1, 1, tzinfo=UTC),  # out of the loop's way: the plain cancel comes first
    )
    done = await api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json={"at_once": True})
    assert done.status == 200 and done.body["status"] == "cancelled", done
    assert done.body["refund"] is not None and done.body["refund"]["amount"] == "5", done.body
    assert await ss.balance(api, t, email) == "20"
