"""Webhooks end to end, the delivery log: partners and operators filter, page and redeliver
from it, each tenant sees only its own deliveries, and below the gateway a request that names no
tenant is refused rather than read as every tenant.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from invo.v1 import webhooks_pb2, webhooks_pb2_grpc

from devstack.stack import Stack
from services.common import errors, grpcutil
from tests.helpers import Api, assert_envelope
from tests.webhooks_support import Receiver, credit, now_iso, receivers, send_test, settled, show, tenant_for, until

__all__ = ["receivers"]  # the fixture, imported for this module's tests


# -- 8. the delivery log: partners and operators -----------------------------------------------


async def test_the_delivery_log_filters_pages_isolates_and_redelivers(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers(fail_types={"balance.adjusted"})
    rx_b = await receivers()
    a = await tenant_for(api, rx)
    b = await tenant_for(api, rx_b)
    before = now_iso(-1)
    tests = [await send_test(api, a["sdk_key"]) for _ in range(3)]
    await credit(api, a["tenant_id"], "one@example.com")
    await credit(api, a["tenant_id"], "two@example.com")
    b_test = await send_test(api, b["sdk_key"])
    key = a["sdk_key"]

    async def settled_all() -> list[dict[str, Any]] | None:
        resp = await api.get("/api/webhooks/deliveries", key=key)
        data = resp.body["data"]
        return data if len(data) == 5 and all(d["status"] != "pending" for d in data) else None

    everything = await until(settled_all, timeout_s=20, interval_s=0.2)
    assert [d["delivery_id"] for d in everything] == sorted((d["delivery_id"] for d in everything), reverse=True)
    assert {d["tenant_id"] for d in everything} == {a["tenant_id"]}

    async def listed(query: str, k: str = key) -> list[str]:
        resp = await api.get(f"/api/webhooks/deliveries?{query}", key=k)
        assert resp.status == 200, resp
        return [d["delivery_id"] for d in resp.body["data"]]

    test_ids = {d["delivery_id"] for d in tests}
    failed_ids = {d["delivery_id"] for d in everything if d["event_type"] == "balance.adjusted"}
    assert len(failed_ids) == 2
    assert set(await listed("event_type=webhook.test")) == test_ids
    assert set(await listed("event_type=balance.adjusted&status=failed")) == failed_ids
    assert set(await listed("status=delivered")) == test_ids
    assert await listed("status=pending") == []
    assert await listed("event_type=item.purchased") == []
    assert len(await listed(f"since={before}")) == 5
    assert await listed(f"since={now_iso(60)}") == []
    assert await listed(f"until={before}") == []
    assert len(await listed(f"since={before}&until={now_iso(60)}")) == 5

    # Cursor paging, two at a time: every delivery once, newest first.
    pages: list[list[str]] = []
    cursor = ""
    while True:
        resp = await api.get("/api/webhooks/deliveries?limit=2" + (f"&cursor={cursor}" if cursor else ""), key=key)
        assert resp.status == 200, resp
        pages.append([d["delivery_id"] for d in resp.body["data"]])
        assert resp.body["next_cursor"] == pages[-1][-1]
        if not resp.body["has_more"]:
            break
        cursor = resp.body["next_cursor"]
    assert [len(p) for p in pages] == [2, 2, 1]
    flat = [i for p in pages for i in p]
    assert flat == [d["delivery_id"] for d in everything] and len(set(flat)) == 5
    paged = await api.get("/api/webhooks/deliveries?status=failed&limit=1", key=key)
    assert paged.body["has_more"] is True and len(paged.body["data"]) == 1
    last = await api.get(f"/api/webhooks/deliveries?status=failed&limit=1&cursor={paged.body['next_cursor']}", key=key)
    assert last.body["has_more"] is False and len(last.body["data"]) == 1
    assert {paged.body["data"][0]["delivery_id"], last.body["data"][0]["delivery_id"]} == failed_ids

    # One delivery with its attempt log.
    one = await show(api, key, tests[0]["delivery_id"])
    assert one["event_id"] == tests[0]["event_id"] and one["status"] == "delivered" and one["url"] == rx.url
    assert len(one["attempt_log"]) == 1
    attempt = one["attempt_log"][0]
    assert set(attempt) == {"attempt", "at", "status_code", "latency_ms", "response_body", "error"}
    assert (attempt["attempt"], attempt["status_code"], attempt["response_body"], attempt["error"]) == (
        1,
        200,
        "ok",
        None,
    )
    assert "attempt_log" not in everything[0]  # the list is a summary
    assert_envelope(await api.get("/api/webhooks/deliveries/whd_nope", key=key), 404, "DELIVERY_NOT_FOUND")

    # Tenant isolation: B neither sees nor redelivers A's deliveries.
    failed_one = sorted(failed_ids)[0]
    for path in (f"/api/webhooks/deliveries/{failed_one}", f"/api/webhooks/deliveries/{tests[0]['delivery_id']}"):
        assert_envelope(await api.get(path, key=b["sdk_key"]), 404, "DELIVERY_NOT_FOUND")
        assert_envelope(await api.post(path + "/redeliver", key=b["sdk_key"]), 404, "DELIVERY_NOT_FOUND")
    assert await listed("limit=100", b["sdk_key"]) == [b_test["delivery_id"]]
    resp = await api.post("/api/webhooks/redeliver-failed", key=b["sdk_key"], json={"since": before})
    assert resp.body == {"redelivered": 0}, resp
    assert set(await listed("status=failed")) == failed_ids

    # The operator: any tenant's deliveries, by tenant.
    adm = await api.get(f"/admin/webhooks/deliveries?tenant_id={a['tenant_id']}&limit=100", admin=True)
    assert adm.status == 200, adm
    assert [d["delivery_id"] for d in adm.body["data"]] == [d["delivery_id"] for d in everything]
    adm_b = await api.get(f"/admin/webhooks/deliveries?tenant_id={b['tenant_id']}&status=delivered", admin=True)
    assert [d["delivery_id"] for d in adm_b.body["data"]] == [b_test["delivery_id"]]
    adm_all = await api.get("/admin/webhooks/deliveries?limit=100", admin=True)
    assert {a["tenant_id"], b["tenant_id"]} <= {d["tenant_id"] for d in adm_all.body["data"]}
    adm_one = await api.get(f"/admin/webhooks/deliveries/{failed_one}", admin=True)
    assert adm_one.status == 200 and adm_one.body["tenant_id"] == a["tenant_id"]
    assert len(adm_one.body["attempt_log"]) == 7 and {x["status_code"] for x in adm_one.body["attempt_log"]} == {500}
    assert_envelope(await api.get("/admin/webhooks/deliveries/whd_nope", admin=True), 404, "DELIVERY_NOT_FOUND")
    # An SDK key never opens the admin API.
    assert_envelope(await api.get("/admin/webhooks/deliveries", key=key), 401, "MISSING_ADMIN_TOKEN")

    # The receiver recovers: the operator redelivers one, then everything failed for the tenant.
    rx.fail_types = set()
    red = await api.post(f"/admin/webhooks/deliveries/{failed_one}/redeliver", admin=True)
    assert red.status == 200 and red.body["delivery_id"] == failed_one, red
    await settled(api, key, failed_one, "delivered")
    rest = await api.post(
        "/admin/webhooks/redeliver-failed", admin=True, json={"since": before, "tenant_id": a["tenant_id"]}
    )
    assert rest.status == 200 and rest.body == {"redelivered": 1}, rest
    await settled(api, key, sorted(failed_ids)[1], "delivered")
    assert await listed("status=failed") == []
    assert_envelope(
        await api.post("/admin/webhooks/redeliver-failed", admin=True, json={"tenant_id": a["tenant_id"]}),
        400,
        "MISSING_PARAMETER",
    )


async def test_an_empty_tenant_id_is_refused_never_read_as_every_tenant(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    """Below the gateway, a request that names no tenant is refused; only an explicit
    `all_tenants` (the operator's API) reaches across tenants, and never together with a tenant."""
    rx = await receivers()
    t = await tenant_for(api, rx)
    d = await send_test(api, t["sdk_key"])
    await settled(api, t["sdk_key"], d["delivery_id"], "delivered")
    since = timestamp_pb2.Timestamp()
    since.FromDatetime(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    channel = grpcutil.channel(stack.env["INVO_WEBHOOKS_ADDR"])
    try:
        stub = webhooks_pb2_grpc.WebhooksServiceStub(channel)
        one = {"delivery_id": d["delivery_id"]}
        refused: list[tuple[Any, Any]] = [
            (stub.ListDeliveries, webhooks_pb2.ListDeliveriesRequest()),
            (stub.GetDelivery, webhooks_pb2.GetDeliveryRequest(**one)),
            (stub.Redeliver, webhooks_pb2.GetDeliveryRequest(**one)),
            (stub.RedeliverFailed, webhooks_pb2.RedeliverFailedRequest(since=since)),
            (stub.SendTestEvent, webhooks_pb2.SendTestEventRequest()),
            # Both a tenant and every tenant: ambiguous, so refused too.
            (stub.ListDeliveries, webhooks_pb2.ListDeliveriesRequest(tenant_id=t["tenant_id"], all_tenants=True)),
            (stub.GetDelivery, webhooks_pb2.GetDeliveryRequest(tenant_id=t["tenant_id"], all_tenants=True, **one)),
            (
                stub.RedeliverFailed,
                webhooks_pb2.RedeliverFailedRequest(tenant_id=t["tenant_id"], all_tenants=True, since=since),
            ),
        ]
        for method, request in refused:
            with pytest.raises(errors.InvalidRequest):
                await grpcutil.call(method, request, timeout_s=5)
        # Nothing was redelivered by the refused Redeliver: one attempt, as before.
        assert len(rx.of(d["event_id"])) == 1
        # Explicitly across tenants, as the operator's API asks: found.
        got = await grpcutil.call(
            stub.GetDelivery, webhooks_pb2.GetDeliveryRequest(all_tenants=True, **one), timeout_s=5
        )
        assert (got.tenant_id, got.status) == (t["tenant_id"], "delivered")
        listed = await grpcutil.call(
            stub.ListDeliveries, webhooks_pb2.ListDeliveriesRequest(all_tenants=True, limit=100), timeout_s=5
        )
        assert d["delivery_id"] in {x.delivery_id for x in listed.deliveries}
        # And another tenant's id finds nothing.
        other = await api.create_tenant()
        with pytest.raises(errors.NotFound):
            await grpcutil.call(
                stub.GetDelivery, webhooks_pb2.GetDeliveryRequest(tenant_id=other["tenant_id"], **one), timeout_s=5
            )
    finally:
        await channel.close()
