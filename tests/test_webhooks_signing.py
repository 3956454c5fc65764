"""Webhooks end to end, signing: every event reaches the tenant's endpoint in the envelope,
signed (checked with Stripe's own verifier), and a rotated secret signs alongside the old one
during the overlap and alone after it.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import stripe

from tests.helpers import Api, assert_envelope, eventually
from tests.webhooks_support import (
    ENVELOPE,
    Call,
    Receiver,
    credit,
    delivered_call,
    list_all,
    receivers,
    send_test,
    tenant_for,
    until,
    v1_count,
    verifies,
    verify,
)

__all__ = ["receivers"]  # the fixture, imported for this module's tests


# -- 1. signatures and the envelope -----------------------------------------------------------


async def test_every_delivery_verifies_with_stripes_verifier_and_a_tampered_body_does_not(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx, currency_name="Stars")
    secret = t["webhook_signing_secret"]
    assert secret.startswith("whsec_")
    # Three kinds of event: an admin credit, an item purchase (both through the outbox and
    # JetStream) and a test event.
    await credit(api, t["tenant_id"], "fan@example.com", "10")
    purchase = await api.post(
        "/api/item-purchases/purchase-item",
        key=t["sdk_key"],
        json={
            "player_email": "fan@example.com",
            "item_id": "sword_01",
            "item_name": "Iron Sword",
            "price": "2.5",
            "idempotency_key": "sig-1",
        },
    )
    assert purchase.status == 200, purchase
    test = await send_test(api, t["sdk_key"])

    async def three() -> bool:
        return {c.event["event_type"] for c in rx.answered()} == {"balance.adjusted", "item.purchased", "webhook.test"}

    await eventually(three, timeout_s=15)
    assert len(rx.calls) == 3 and not rx.stray
    for call in rx.calls:
        verify(call, secret)  # passes
        body_text = call.body.decode()
        assert call.headers["Content-Type"] == "application/json"
        event = call.event
        assert set(event) == ENVELOPE
        assert call.headers["X-Invo-Event-Id"] == event["event_id"]
        assert event["tenant_id"] == t["tenant_id"]
        datetime.datetime.fromisoformat(event["created_at"].replace("Z", "+00:00"))
        sig = call.headers["X-Invo-Signature"]
        assert sig.startswith("t=") and v1_count(call) == 1
        assert abs(int(sig.split(",")[0][2:]) - time.time()) < 60
        # One byte changed anywhere: rejected.
        for i in (0, len(body_text) // 2, len(body_text) - 1):
            tampered = body_text[:i] + ("x" if body_text[i] != "x" else "y") + body_text[i + 1 :]
            with pytest.raises(stripe.SignatureVerificationError):
                stripe.WebhookSignature.verify_header(tampered, sig, secret, tolerance=300)
        # Another tenant's secret, or a stale timestamp: rejected.
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.WebhookSignature.verify_header(body_text, sig, "whsec_" + "x" * 32, tolerance=300)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.WebhookSignature.verify_header(
                body_text, sig.replace(sig.split(",")[0], f"t={int(time.time()) - 3600}"), secret, tolerance=300
            )
    by_type = {c.event["event_type"]: c.event for c in rx.calls}
    assert by_type["webhook.test"]["event_id"] == test["event_id"]
    assert by_type["item.purchased"]["data"]["transaction_id"] == purchase.body["transaction_id"]
    assert by_type["item.purchased"]["data"]["price"] == "2.50"
    assert by_type["balance.adjusted"]["data"]["amount"] == "10"
    assert by_type["balance.adjusted"]["data"]["currency_name"] == "Stars"
    # The delivery log agrees: three delivered, one attempt each, answered 200.
    log = await list_all(api, "/api/webhooks/deliveries", key=t["sdk_key"])
    assert sorted(d["event_id"] for d in log) == sorted(c.event_id for c in rx.calls)
    for d in log:
        assert d["status"] == "delivered" and d["attempts"] == 1 and d["url"] == rx.url
        assert d["delivered_at"] is not None and d["next_attempt_at"] is None


# -- 2. secret rotation --------------------------------------------------------------------------


async def rotate(api: Api, t: dict[str, Any], overlap_s: int, *, admin: bool = False) -> str:
    if admin:
        resp = await api.post(
            f"/admin/tenants/{t['tenant_id']}/webhook-secret/rotate", admin=True, json={"overlap_seconds": overlap_s}
        )
    else:
        resp = await api.post("/api/webhooks/rotate-secret", key=t["sdk_key"], json={"overlap_seconds": overlap_s})
    assert resp.status == 201, resp
    secret = str(resp.body["webhook_signing_secret"])
    assert secret.startswith("whsec_")
    expires = datetime.datetime.fromisoformat(resp.body["previous_expires_at"].replace("Z", "+00:00"))
    expected = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=overlap_s)
    assert abs((expires - expected).total_seconds()) < 60
    return secret


async def test_rotation_signs_with_both_secrets_during_the_overlap_and_only_the_new_one_after(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    s0 = t["webhook_signing_secret"]
    s1 = await rotate(api, t, 3600)
    # The first delivery after the rotation carries two v1= entries: either secret verifies it.
    call = await delivered_call(api, rx, t["sdk_key"])
    assert v1_count(call) == 2, call.headers["X-Invo-Signature"]
    verify(call, s1)
    verify(call, s0)

    # A rotation without overlap: the new secret only, from the very next delivery on.
    s2 = await rotate(api, t, 0)

    async def signed_once() -> Call | None:
        c = await delivered_call(api, rx, t["sdk_key"])
        return c if v1_count(c) == 1 and verifies(c, s2) else None

    call = await until(signed_once, timeout_s=15, interval_s=0.3)
    verify(call, s2)
    for dead in (s0, s1):
        with pytest.raises(stripe.SignatureVerificationError):
            verify(call, dead)

    # The operator's rotation works the same way.
    s3 = await rotate(api, t, 60, admin=True)

    async def signed_twice() -> Call | None:
        c = await delivered_call(api, rx, t["sdk_key"])
        return c if v1_count(c) == 2 else None

    call = await until(signed_twice, timeout_s=15, interval_s=0.3)
    verify(call, s3)
    verify(call, s2)
    assert not verifies(call, s1) and not verifies(call, s0)
    # Every request the receiver ever got verifies with one of the secrets live when it was sent.
    assert all(any(verifies(c, s) for s in (s0, s1, s2, s3)) for c in rx.calls)

    # Bad input.
    for body, code in [
        ({"overlap_seconds": -1}, "INVALID_PARAMETER"),
        ({"overlap_seconds": 30 * 86400 + 1}, "INVALID_PARAMETER"),
        ({"overlap_seconds": "60"}, "INVALID_PARAMETER"),
        ({"overlap_seconds": True}, "INVALID_PARAMETER"),
        ({"overlap": 60}, "UNKNOWN_FIELD"),
    ]:
        assert_envelope(await api.post("/api/webhooks/rotate-secret", key=t["sdk_key"], json=body), 400, code)
    missing = await api.post("/admin/tenants/tn_nope/webhook-secret/rotate", admin=True, json={})
    assert missing.status == 404, missing


async def test_a_rotation_signs_the_very_next_delivery_with_the_new_secret(
    api: Api, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    old = t["webhook_signing_secret"]
    await delivered_call(api, rx, t["sdk_key"])  # the service has looked the tenant up
    new = await rotate(api, t, 0)  # e.g. the old secret leaked
    call = await delivered_call(api, rx, t["sdk_key"])
    assert verifies(call, new), "the delivery after the rotation is not signed with the new secret"
    assert not verifies(call, old), "the revoked secret still signs"
