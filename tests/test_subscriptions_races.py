"""Subscriptions' renewals racing: eight renewal rounds at once (standing in for replicas) with the
background loop, the subscriptions service killed in the middle of a round (the ledger frozen so
the kill lands with charges in flight, one charge already made by a "dead replica"), and cancels at
once racing a round: each period charged once, no charge for a period after a cancel. The helpers
and fixtures are test_subscriptions_renewals.py's; after every test, the ledger check."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
from typing import Any

import grpc
from invo.v1 import ledger_pb2, ledger_pb2_grpc

from devstack.stack import Stack
from tests import subscriptions_support as ss
from tests.helpers import Api, eventually
from tests.subscriptions_support import _ledger_checked, db, schema
from tests.test_subscriptions_renewals import (
    Made,
    at,
    clock,
    every,
    iso,
    kinds_by_subscription,
    ledger_periods,
    made,
    many,
    renew_at,
    row_of,
    tenant_at,
)

__all__ = ["_ledger_checked", "made"]  # the fixtures


async def assert_renewed_once(
    api: Api, stack: Stack, t: dict[str, Any], subs: dict[str, str], due: datetime.datetime, left: str
) -> None:
    """Every subscription of `subs` paid period 2 (from `due`) once: one charge row, one ledger
    purchase, one subscription.renewed event, the player's balance `left`."""
    sids = list(subs)
    for sid, email in subs.items():
        s = await ss.get(api, t, sid)
        assert (s["status"], s["periods_paid"], s["failed_attempts"]) == ("active", 2, 0), s
        assert (s["last_charge"]["period"], s["last_charge"]["period_start"]) == (2, iso(due)), s
        assert await ss.balance(api, t, email) == left, (sid, email)
    assert await ledger_periods(stack, sids) == {sid: [1, 2] for sid in sids}
    rows = await db(
        stack,
        f"SELECT subscription_id, array_agg(period ORDER BY period) AS periods"
        f" FROM {schema(stack, 'subscriptions')}.subscription_charges WHERE subscription_id = ANY($1) GROUP BY 1",
        sids,
    )
    assert {r["subscription_id"]: r["periods"] for r in rows} == {sid: [1, 2] for sid in sids}
    want = {sid: ["subscription.created", "subscription.renewed"] for sid in sids}
    assert await kinds_by_subscription(stack, t["tenant_id"], want) == want


async def test_replicas_racing_renew_every_subscription_once(api: Api, stack: Stack, made: Made) -> None:
    start, due = at(2065, 5, 31), at(2065, 6, 30)
    t = await tenant_at(api, stack, start)
    subs = await many(api, t, 50, "20", made)  # enough for one renewal each: a second debit would be refused
    # Eight rounds at once, spread over the replicas there are (the session stack runs one: then
    # the eight calls are the racing replicas), and the background loop.
    addresses = stack.env["INVO_SUBSCRIPTIONS_ADDR"].split(",")
    await ss.set_clock(stack, due)
    await asyncio.gather(*(renew_at(addresses[i % len(addresses)]) for i in range(8)))
    await eventually(lambda: every(stack, subs), timeout_s=20)
    await asyncio.gather(*(renew_at(addresses[i % len(addresses)]) for i in range(4)))
    await assert_renewed_once(api, stack, t, subs, due, "0")


async def test_a_service_killed_mid_round_charges_each_period_once(api: Api, stack: Stack, made: Made) -> None:
    start, due = at(2066, 1, 31), at(2066, 2, 28)
    t = await tenant_at(api, stack, start)
    subs = await many(api, t, 40, "30", made)  # enough for two renewals: a double charge would show

    # One of them as a crash leaves it: the ledger charged period 2 for a replica that died before
    # recording it. The renewal sends the same request (rebuilt from the row) and gets that result.
    first = next(iter(subs))
    row = await row_of(stack, first)
    who = {"tenant_id": row["tenant_id"], "player_email": row["player_email"], "price_minor": row["price_minor"]}
    key = ledger_pb2.Idempotency(namespace="subscriptions", key=f"{first}:2")
    request = ledger_pb2.PurchaseItemRequest(
        **who,
        item_id=row["plan_id"],
        item_name=row["plan_name"],
        quantity=1,
        idempotency=key,
        metadata_json=json.dumps({"subscription_id": first, "period": 2}),
        network_fee_bps=1000,
        currency_name="Gems",
    )
    async with grpc.aio.insecure_channel(stack.env["INVO_LEDGER_ADDR"].split(",")[0]) as channel:
        sent = await ledger_pb2_grpc.LedgerServiceStub(channel).PurchaseItem(request, timeout=10)
    assert (sent.total_minor, sent.new_balance_minor, sent.duplicate) == (1000, 1000, False), sent

    # All of them: the service SIGKILLed mid-round, every one claimed and its charge sent to a ledger
    # frozen meanwhile (SIGSTOP), so that none can be recorded before the kill. Thawed, the ledger
    # may still apply a charge whose sender is gone: the case of `first`, for any of them.
    claimed = "periods_paid = 1 AND processing_until > now()"
    ledger = stack.procs["ledger"].pid
    os.kill(ledger, signal.SIGSTOP)
    try:
        await ss.set_clock(stack, due)
        rounds = asyncio.gather(*(ss.renew(stack) for _ in range(3)), return_exceptions=True)
        await eventually(
            lambda: every(stack, subs, claimed), timeout_s=3, interval_s=0.01
        )  # well within the ledger calls' 5 s
        await asyncio.to_thread(stack.restart, "subscriptions", sig=signal.SIGKILL)
    finally:
        os.kill(ledger, signal.SIGCONT)
    await rounds  # those that had claimed some died with the service
    # The killed rounds' leases run out (rpc_timeout * 2 + 5 s); the restarted loop renews the rest.
    await eventually(lambda: every(stack, subs), timeout_s=40, interval_s=0.2)
    await ss.renew(stack)
    assert (await ss.get(api, t, first))["last_charge"]["transaction_id"] == sent.transaction_id
    await assert_renewed_once(api, stack, t, subs, due, "10")


async def test_a_cancel_at_once_racing_a_round_leaves_no_later_charge(api: Api, stack: Stack, made: Made) -> None:
    start, due = at(2067, 1, 31), at(2067, 2, 28)
    t = await tenant_at(api, stack, start)
    subs = await many(api, t, 40, "30", made)
    await ss.set_clock(stack, due)

    async def cancel(sid: str) -> dict[str, Any]:
        resp = await api.post(f"/api/subscriptions/{sid}/cancel", key=t["sdk_key"], json={"at_once": True})
        assert resp.status == 200, resp
        return dict(resp.body)

    # Half the cancels sent, then a round (which claims a batch of 20), then the other half, all
    # racing (and the loop). Some are renewed first (their period 2 began at the due time, before
    # the cancel), some never.
    sids = list(subs)
    done = await asyncio.gather(
        *(cancel(sid) for sid in sids[::2]), ss.renew(stack), *(cancel(sid) for sid in sids[1::2])
    )
    renewed = set()
    for c in (c for c in done if isinstance(c, dict)):
        assert (c["status"], c["cancellation_reason"], c["cancelled_at"]) == ("cancelled", "requested", iso(due)), c
        assert c["periods_paid"] in (1, 2) and c["last_charge"]["period"] == c["periods_paid"], c
        assert c["last_charge"]["period_start"] <= c["cancelled_at"], c
        if c["periods_paid"] == 2:
            renewed.add(c["subscription_id"])

    # Months later, with money to pay: nothing more is charged.
    await clock(stack, at(2067, 5, 31))
    for sid, email in subs.items():
        s = await ss.get(api, t, sid)
        assert (s["status"], s["periods_paid"]) == ("cancelled", 2 if sid in renewed else 1), s
        assert await ss.balance(api, t, email) == ("10" if sid in renewed else "20")
    assert await ledger_periods(stack, list(subs)) == {sid: [1, 2] if sid in renewed else [1] for sid in subs}
    renewal = ["subscription.renewed"]
    want = {
        sid: ["subscription.created", *(renewal if sid in renewed else []), "subscription.cancelled"] for sid in subs
    }
    assert await kinds_by_subscription(stack, t["tenant_id"], want) == want
