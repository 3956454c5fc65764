"""An order's webhook deliveries: the webhooks service keeps the order an event is about as it
records it, and operators list the deliveries of one order's events (the console's timeline)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.after_sale_support import paid, refund
from tests.helpers import Api, assert_envelope, eventually
from tests.webhooks_support import Receiver, receivers, tenant_for

__all__ = ["receivers"]  # the fixture, imported for this module's tests


async def test_the_deliveries_of_one_orders_events_and_of_no_other(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    _, first = await paid(api, t)
    _, second = await paid(api, t)
    assert (await refund(api, first["order_id"], "1.00")).status == 201

    async def of(order_id: str, at_least: int) -> list[dict[str, Any]] | None:
        resp = await api.get(f"/admin/webhooks/deliveries?tenant_id={t['tenant_id']}&order_id={order_id}", admin=True)
        assert resp.status == 200, resp
        found: list[dict[str, Any]] = resp.body["data"]
        return found if len(found) >= at_least else None

    mine = await eventually(lambda: of(first["order_id"], 2), timeout_s=20)
    theirs = await eventually(lambda: of(second["order_id"], 1), timeout_s=20)
    assert mine is not None and theirs is not None
    assert {d["delivery_id"] for d in mine}.isdisjoint({d["delivery_id"] for d in theirs})
    assert any("refund" in d["event_type"] for d in mine), [d["event_type"] for d in mine]
    every = (await api.get(f"/admin/webhooks/deliveries?tenant_id={t['tenant_id']}&limit=100", admin=True)).body["data"]
    assert {d["delivery_id"] for d in mine} | {d["delivery_id"] for d in theirs} <= {d["delivery_id"] for d in every}
    bad = await api.get("/admin/webhooks/deliveries?order_id=not-an-order", admin=True)
    assert_envelope(bad, 400, "INVALID_PARAMETER")
