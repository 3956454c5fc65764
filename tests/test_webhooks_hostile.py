"""Webhooks end to end, hostile input: production endpoints must be https on a public address
and are never redirected (no SSRF into our network); bad query and body input is a 400, never a
500; a malformed event on the stream is dropped and delivery goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from devstack.stack import Stack
from tests.helpers import Api, assert_envelope, eventually
from tests.webhooks_support import (
    RESTARTER,
    Receiver,
    credit,
    now_iso,
    receivers,
    schedule,
    send_test,
    settled,
    show,
    tenant_for,
    until,
)

__all__ = ["receivers"]  # the fixture, imported for this module's tests


# -- 7. production endpoints: https, public addresses, no redirects ----------------------------


async def test_a_production_tenant_cannot_register_http(api: Api) -> None:
    resp = await api.post(
        "/admin/tenants",
        admin=True,
        json={
            "name": "Prod",
            "currency_name": "Gems",
            "environment": "production",
            "webhook_url": "http://example.com/h",
        },
    )
    assert_envelope(resp, 400, "INVALID_PARAMETER")
    assert resp.body["param"] == "webhook_url"
    assert "https" in resp.body["message"]
    ok = await api.create_tenant(environment="production", webhook_url="https://example.com/hook")
    patch = await api.patch(
        f"/admin/tenants/{ok['tenant_id']}", admin=True, json={"webhook_url": "http://example.com/hook"}
    )
    assert_envelope(patch, 400, "INVALID_PARAMETER")
    assert patch.body["param"] == "webhook_url"


async def test_a_production_delivery_to_a_loopback_address_is_refused(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    # host -> what the attempt log says. Literals are refused before connecting; names, and the
    # shorthands of 127.0.0.1 that Python's ipaddress does not parse, by the resolver on what they
    # resolve to. Each must name the refusal: any other error (a TLS failure against this plain
    # HTTP receiver) would mean the request went out.
    hosts: dict[str, str] = {
        "127.0.0.1": "refused: 127.0.0.1 is not a public address",
        "[::1]": "refused: ::1 is not a public address",
        "[::ffff:127.0.0.1]": "is not a public address",
        "localhost": "is not a public address",
        "127.1": "refused: 127.0.0.1 is not a public address",
        "2130706433": "refused: 127.0.0.1 is not a public address",
    }
    tenants = {
        host: await api.create_tenant(environment="production", webhook_url=f"https://{host}:{rx.port}{rx.path}")
        for host in hosts
    }
    sent = {host: await send_test(api, t["sdk_key"]) for host, t in tenants.items()}
    results = await asyncio.gather(
        *(settled(api, tenants[h]["sdk_key"], sent[h]["delivery_id"], "failed") for h in hosts)
    )
    for (host, says), failed in zip(hosts.items(), results, strict=True):
        assert failed["url"] == f"https://{host}:{rx.port}{rx.path}"
        assert len(failed["attempt_log"]) == 1 + len(schedule(stack)), host
        for a in failed["attempt_log"]:
            assert a["status_code"] is None and a["error"], (host, a)
            assert says in a["error"], (host, a)
    # Not one request reached the receiver.
    assert rx.calls == [] and rx.stray == []


async def test_a_refused_name_says_why_in_the_attempt_log(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await api.create_tenant(environment="production", webhook_url=f"https://localhost:{rx.port}{rx.path}")
    d = await send_test(api, t["sdk_key"])

    async def first_attempt() -> dict[str, Any] | None:
        got = await show(api, t["sdk_key"], d["delivery_id"])
        return got["attempt_log"][0] if got.get("attempt_log") else None

    attempt = await until(first_attempt)
    assert attempt["status_code"] is None and rx.calls == []
    assert "not a public address" in attempt["error"], attempt


async def test_redirects_are_not_followed(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    target = await receivers()
    rx = await receivers(redirect_to=target.url)
    t = await tenant_for(api, rx)
    d = await send_test(api, t["sdk_key"])
    failed = await settled(api, t["sdk_key"], d["delivery_id"], "failed")
    assert [a["status_code"] for a in failed["attempt_log"]] == [302] * (1 + len(schedule(stack)))
    assert all(a["error"] is None for a in failed["attempt_log"])
    assert len(rx.calls) == 1 + len(schedule(stack))
    assert target.calls == [] and target.stray == []


async def test_bad_input_and_a_tenant_without_a_webhook_url(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    assert_envelope(await api.post("/api/webhooks/test", key=key), 400, "NO_WEBHOOK_URL")
    assert (await api.get("/api/webhooks/deliveries", key=key)).body == {
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }
    for query in (
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "limit=",
        "status=done",
        "status=PENDING",
    ):
        resp = await api.get(f"/api/webhooks/deliveries?{query}", key=key)
        assert_envelope(resp, 400, "INVALID_PARAMETER")
        assert resp.body["param"] == query.split("=")[0], resp
    for body, code in [
        ({}, "MISSING_PARAMETER"),
        ({"since": "not a time"}, "INVALID_PARAMETER"),
        ({"since": 12}, "INVALID_PARAMETER"),
        ({"since": now_iso(), "tenant_id": "tn_other"}, "UNKNOWN_FIELD"),
    ]:
        assert_envelope(await api.post("/api/webhooks/redeliver-failed", key=key, json=body), 400, code)
    assert (await api.get("/api/webhooks/deliveries")).status == 401


async def test_a_time_out_of_range_is_400_not_500(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    for query in ("since=0001-01-01T00:00:00%2B05:00", "until=9999-12-31T23:59:59-05:00"):
        assert_envelope(await api.get(f"/api/webhooks/deliveries?{query}", key=key), 400, "INVALID_PARAMETER")
    for since in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        resp = await api.post("/api/webhooks/redeliver-failed", key=key, json={"since": since})
        assert_envelope(resp, 400, "INVALID_PARAMETER")


async def test_a_nul_character_is_refused_not_500(api: Api) -> None:
    t = await api.create_tenant()
    key = t["sdk_key"]
    # The gateway refuses NUL anywhere in a URL or a JSON body: PostgreSQL text cannot hold it.
    for query in ("cursor=%00", "event_type=a%00b"):
        assert_envelope(await api.get(f"/api/webhooks/deliveries?{query}", key=key), 400, "INVALID_REQUEST")
    assert_envelope(await api.get("/api/webhooks/deliveries/whd_%00", key=key), 400, "INVALID_REQUEST")
    assert_envelope(await api.post("/api/webhooks/deliveries/whd_%00/redeliver", key=key), 400, "INVALID_REQUEST")
    resp = await api.post(
        "/api/item-purchases/purchase-item",
        key=key,
        json={"player_email": "a@b.co", "item_id": "x\u0000y", "item_name": "n", "price": "1", "idempotency_key": "k"},
    )
    assert_envelope(resp, 400, "INVALID_JSON")


# -- a malformed event on the stream ----------------------------------------------------------


async def test_a_malformed_event_on_the_stream_is_dropped_and_delivery_goes_on(
    api: Api, stack: Stack, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    prefix = stack.env.get("INVO_NATS_SUBJECT_PREFIX", "invo.events")
    stream = stack.env.get("INVO_NATS_STREAM", "INVO_EVENTS")
    proc = stack.procs["webhooks"]
    nc = await nats.connect(stack.env["INVO_NATS_URL"])
    js = nc.jetstream()
    seq = None
    try:
        # A producer with a bug publishes something that is not an envelope.
        seq = (await js.publish(f"{prefix}.{t['tenant_id']}.broken", b"not json")).seq
        await credit(api, t["tenant_id"])  # a real event after it

        async def delivered_or_dead() -> bool:
            return bool(rx.answered()) or proc.poll() is not None

        await eventually(delivered_or_dead, timeout_s=15)
        assert proc.poll() is None, f"the webhooks service exited with {proc.returncode}"
        assert [c.event["event_type"] for c in rx.calls] == ["balance.adjusted"]
    finally:
        # Leave the stream and the network as they were for the tests after this one.
        if seq is not None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_msg(stream, seq)
        await nc.close()
        if stack.procs["webhooks"].poll() is not None:
            await asyncio.get_running_loop().run_in_executor(
                RESTARTER, functools.partial(stack.restart, "webhooks", sig=signal.SIGTERM)
            )
