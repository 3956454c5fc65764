"""Both transfer flows once, end to end through the gateway: the money, the texts, the events to both
tenants and the ledger check. The detailed tests are in test_transfers_*.py."""

from __future__ import annotations

from devstack.stack import Stack
from tests import transfers_support as ts
from tests.helpers import Api


async def test_a_self_transfer_moves_the_amount_and_shares_the_fee(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "200")
    tid, code, sender_phone = await ts.self_transfer_to_claimable(api, src, dst, player, "100")
    assert await ts.balance(api, src, player) == "90"  # 100 + the 10% fee held

    claimed = await ts.claim(api, dst, code, there)
    assert claimed.status == 200, claimed
    assert claimed.body["status"] == "completed" and claimed.body["duplicate"] is False
    assert claimed.body["fee_breakdown"] == {
        "source_tenant": "3.50",
        "destination_tenant": "3.50",
        "network": "3",
        "total": "10",
    }
    assert await ts.balance(api, dst, there) == "100"
    # The code was texted to the sender's own phone too.
    assert code == await ts.code_of(api, sender_phone)

    for t, role, share in ((src, "source", "3.50"), (dst, "destination", "3.50")):
        (event,) = await ts.transfer_events(stack, t["tenant_id"], tid)
        assert event["event_type"] == "transfer.completed"
        assert event["data"]["role"] == role
        assert event["data"]["fee_total"] == "10" and event["data"]["fee_share"] == share
    await ts.check_ledger(api)


async def test_a_send_goes_to_the_recipients_phone_and_any_tenant_claims_it(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player, there = ts.email(), ts.email()
    await ts.fund(api, src, player, "55")
    tid, code, sender_phone, _ = await ts.send_to_claimable(api, src, player, "50")
    assert all(code not in text for text in await ts.texts(api, sender_phone))  # never to the sender
    claimed = await ts.claim(api, dst, code, there, send=True)
    assert claimed.status == 200, claimed
    assert claimed.body["destination_tenant_id"] == dst["tenant_id"]
    assert await ts.balance(api, src, player) == "0"
    assert await ts.balance(api, dst, there) == "50"
    (event,) = await ts.transfer_events(stack, dst["tenant_id"], tid)
    assert event["data"]["transfer_type"] == "send" and event["data"]["new_balance"] == "50"
    await ts.check_ledger(api)
