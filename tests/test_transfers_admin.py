"""Operators' view of transfers: any tenant's transfers read as the tenant reads them, and one not
yet claimed cancelled on its source tenant's behalf (the money back with the sender at once); the
destination cannot be the one to cancel, and a viewer may only read."""

from __future__ import annotations

from tests import transfers_support as ts
from tests.helpers import Api, assert_envelope
from tests.test_operators import as_op, new_operator


async def test_an_operator_reads_and_cancels_a_claimable_transfer_for_its_source(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "20")
    tid, _, _ = await ts.self_transfer_to_claimable(api, src, dst, player, "10")
    assert await ts.balance(api, src, player) == "9"  # 10 and its 10% fee held

    listed = await api.get(f"/admin/tenants/{src['tenant_id']}/transfers?status=claimable", admin=True)
    assert listed.status == 200 and [t["transfer_id"] for t in listed.body["data"]] == [tid]
    as_tenant = await ts.get(api, src, tid)
    shown = await api.get(f"/admin/tenants/{src['tenant_id']}/transfers/{tid}", admin=True)
    assert shown.status == 200 and shown.body == as_tenant.body  # exactly what the tenant reads

    viewer, support = await new_operator(api, "viewer"), await new_operator(api, "support")
    path = f"/admin/tenants/{src['tenant_id']}/transfers/{tid}/cancel"
    assert_envelope(await as_op(api, viewer, "POST", path, {}), 403, "OPERATOR_ROLE_FORBIDDEN")
    wrong_side = await as_op(api, support, "POST", f"/admin/tenants/{dst['tenant_id']}/transfers/{tid}/cancel", {})
    assert_envelope(wrong_side, 403, "NOT_TRANSFER_SOURCE")  # only the source may give a transfer up
    cancelled = await as_op(api, support, "POST", path, {})
    assert cancelled.status == 200 and cancelled.body["status"] == "cancelled", cancelled
    assert await ts.balance(api, src, player) == "20"  # amount and fee back at once
    again = await as_op(api, support, "POST", path, {})  # a repeated cancel answers the first
    assert again.status == 200 and again.body["duplicate"] is True and again.body["status"] == "cancelled", again
    assert (await ts.balance(api, src, player)) == "20"
    await ts.check_ledger(api)
    missing = await api.get(f"/admin/tenants/{src['tenant_id']}/transfers/trf_{'0' * 26}", admin=True)
    assert missing.status == 404
