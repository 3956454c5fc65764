"""X-Game-Secret-Key authentication, tenant isolation, suspension, key rotation, rate limits."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

from devstack.stack import Stack
from services.common import limits
from services.gateway.ratelimit import AuthFailures
from tests import hostile_support as hs
from tests.helpers import Api, assert_envelope, eventually

SDK = "X-Game-Secret-Key"


async def _async(value: bool) -> bool:
    return value


async def test_own_tenant_through_gateway_and_tenants_service(api: Api) -> None:
    t = await api.create_tenant(currency_name="Stars", network_fee_percentage="12.5")
    resp = await api.get("/api/tenant", key=t["sdk_key"])
    assert resp.status == 200
    assert resp.body["tenant_id"] == t["tenant_id"]
    assert resp.body["currency_name"] == "Stars"
    assert resp.body["network_fee_percentage"] == "12.5"
    assert resp.body["transfer_fee_percentage"] == "3.5"
    assert resp.body["universal_transfers"] == "yes"
    # No secret ever leaves: neither the key, nor its hash, nor the signing secret.
    text = str(resp.body)
    assert t["sdk_key"] not in text and t["webhook_signing_secret"] not in text
    assert "secret" not in text.lower() and "hash" not in text.lower()


async def test_missing_key_is_401(api: Api) -> None:
    assert_envelope(await api.get("/api/tenant"), 401, "MISSING_API_KEY")
    assert_envelope(await api.get("/api/tenant", key=""), 401, "MISSING_API_KEY")


async def test_unknown_and_malformed_keys_are_401(api: Api) -> None:
    t = await api.create_tenant()
    tampered = t["sdk_key"][:-1] + ("A" if t["sdk_key"][-1] != "A" else "B")
    for key in (tampered, "ivsdk_" + "x" * 43, "sk_test_123", "ivsdk_" + "y" * 500, "ivsdk_'; drop table tenants;--"):
        assert_envelope(await api.get("/api/tenant", key=key), 401, "INVALID_API_KEY")


async def test_revoked_key_is_401_at_once(api: Api) -> None:
    t = await api.create_tenant()
    assert (await api.get("/api/tenant", key=t["sdk_key"])).status == 200  # now cached
    revoked = await api.post(f"/admin/tenants/{t['tenant_id']}/keys/{t['sdk_key_id']}/revoke", admin=True)
    assert revoked.status == 200 and revoked.body["revoked_at"]
    assert_envelope(await api.get("/api/tenant", key=t["sdk_key"]), 401, "API_KEY_REVOKED")


async def test_rotation_keeps_the_old_key_for_the_overlap(api: Api) -> None:
    t = await api.create_tenant()
    path = f"/admin/tenants/{t['tenant_id']}/keys/{t['sdk_key_id']}/rotate"
    rotated = await api.post(path, admin=True, json={"overlap_seconds": 3600})
    assert rotated.status == 201, rotated
    new_key = rotated.body["new_key"]["sdk_key"]
    assert new_key != t["sdk_key"] and new_key.startswith("ivsdk_")
    assert rotated.body["old_key"]["expires_at"] is not None
    assert (await api.get("/api/tenant", key=t["sdk_key"])).status == 200
    assert (await api.get("/api/tenant", key=new_key)).status == 200
    # The listing shows prefixes only.
    listed = await api.get(f"/admin/tenants/{t['tenant_id']}/keys", admin=True)
    assert len(listed.body["data"]) == 2
    assert all("sdk_key" not in k for k in listed.body["data"])
    assert new_key not in str(listed.body)


async def test_rotation_without_overlap_expires_the_old_key(api: Api) -> None:
    t = await api.create_tenant()
    assert (await api.get("/api/tenant", key=t["sdk_key"])).status == 200
    path = f"/admin/tenants/{t['tenant_id']}/keys/{t['sdk_key_id']}/rotate"
    rotated = await api.post(path, admin=True, json={"overlap_seconds": 0})
    assert rotated.status == 201
    assert_envelope(await api.get("/api/tenant", key=t["sdk_key"]), 401, "API_KEY_EXPIRED")
    assert (await api.get("/api/tenant", key=rotated.body["new_key"]["sdk_key"])).status == 200
    # An expired key cannot be rotated again.
    assert_envelope(await api.post(path, admin=True, json={"overlap_seconds": 0}), 404, "KEY_NOT_FOUND")


async def test_two_tenants_never_see_each_other(api: Api) -> None:
    a = await api.create_tenant(name="Tenant A", currency_name="A Coins")
    b = await api.create_tenant(name="Tenant B", currency_name="B Gems")
    ra = await api.get("/api/tenant", key=a["sdk_key"])
    rb = await api.get("/api/tenant", key=b["sdk_key"])
    assert (ra.body["tenant_id"], ra.body["currency_name"]) == (a["tenant_id"], "A Coins")
    assert (rb.body["tenant_id"], rb.body["currency_name"]) == (b["tenant_id"], "B Gems")
    # A's key cannot manage B's keys: SDK keys never open the admin API.
    resp = await api.post(
        f"/admin/tenants/{b['tenant_id']}/keys/{b['sdk_key_id']}/revoke",
        headers={"Authorization": f"Bearer {a['sdk_key']}"},
    )
    assert_envelope(resp, 401, "INVALID_ADMIN_TOKEN")
    # Revoking A's key leaves B's working.
    await api.post(f"/admin/tenants/{a['tenant_id']}/keys/{a['sdk_key_id']}/revoke", admin=True)
    assert (await api.get("/api/tenant", key=b["sdk_key"])).status == 200


async def test_suspended_tenant_is_403_and_can_be_reactivated(api: Api) -> None:
    t = await api.create_tenant()
    assert (await api.get("/api/tenant", key=t["sdk_key"])).status == 200
    r = await api.patch(f"/admin/tenants/{t['tenant_id']}", admin=True, json={"status": "suspended"})
    assert r.status == 200 and r.body["status"] == "suspended"
    assert_envelope(await api.get("/api/tenant", key=t["sdk_key"]), 403, "TENANT_SUSPENDED")
    await api.patch(f"/admin/tenants/{t['tenant_id']}", admin=True, json={"status": "active"})
    assert (await api.get("/api/tenant", key=t["sdk_key"])).status == 200


async def test_rate_limit_is_429_with_retry_after(api: Api) -> None:
    t = await api.create_tenant(rate_limit_per_second=1)
    other = await api.create_tenant()
    statuses = []
    for _ in range(6):
        resp = await api.get("/api/tenant", key=t["sdk_key"])
        statuses.append(resp.status)
        if resp.status == 429:
            assert_envelope(resp, 429, "RATE_LIMITED")
            assert int(resp.headers["Retry-After"]) >= 1
    assert statuses[0] == 200 and 429 in statuses, statuses
    # One tenant's limit is not another's.
    assert (await api.get("/api/tenant", key=other["sdk_key"])).status == 200


async def test_concurrent_requests_of_many_tenants(api: Api) -> None:
    tenants = [await api.create_tenant(name=f"T{i}") for i in range(5)]
    results = await asyncio.gather(*(api.get("/api/tenant", key=t["sdk_key"]) for t in tenants for _ in range(10)))
    for i, resp in enumerate(results):
        assert resp.status == 200
        assert resp.body["tenant_id"] == tenants[i // 10]["tenant_id"]


async def test_admin_api_needs_its_own_token(api: Api, stack: Stack) -> None:
    assert_envelope(await api.get("/admin/tenants/tn_x"), 401, "MISSING_ADMIN_TOKEN")
    resp = await api.get("/admin/tenants/tn_x", headers={"Authorization": "Bearer wrong"})
    assert_envelope(resp, 401, "INVALID_ADMIN_TOKEN")
    t = await api.create_tenant()
    # An SDK key, in either header, never opens the admin API.
    assert_envelope(await api.get(f"/admin/tenants/{t['tenant_id']}", key=t["sdk_key"]), 401, "MISSING_ADMIN_TOKEN")
    got = await api.get(f"/admin/tenants/{t['tenant_id']}", admin=True)
    assert got.status == 200 and got.body["tenant_id"] == t["tenant_id"]
    assert "sdk_key" not in got.body and "webhook_signing_secret" not in got.body


# -- before authentication: misses cached, failures limited per address (issue 11, finding 10) ------


def _lookups(stack: Stack, tag: str) -> int:
    """AuthenticateKey calls the tenants service logged for requests whose id starts with `tag`:
    its own count of what the gateway asked, no mock in between."""
    lines = (stack.logs / "tenants.log").read_text().splitlines()
    return sum(1 for line in lines if "TenantsService/AuthenticateKey" in line and f'"request_id": "{tag}' in line)


async def _get(
    stack: Stack, path: str, *, source: str, key: str | bytes | None = None, bearer: str = "", rid: str = ""
) -> hs.RawResponse:
    """GET from the loopback address `source` (each test its own: the limit is per address)."""
    headers: list[hs.Header] = []
    if key is not None:
        headers.append((SDK, key))
    if bearer:
        headers.append(("Authorization", f"Bearer {bearer}"))
    if rid:
        headers.append(("X-Request-Id", rid))
    return await hs.send(stack.gateway_url, hs.build("GET", path, headers), source=source)


def _unknown_key() -> str:
    return "ivsdk_" + secrets.token_urlsafe(32)


async def test_a_flood_of_one_unknown_key_costs_one_lookup(stack: Stack) -> None:
    tag = f"miss-{uuid.uuid4().hex[:12]}"
    key, source = _unknown_key(), "127.78.0.1"

    async def one(i: int) -> hs.RawResponse:
        return await _get(stack, "/api/tenant", source=source, key=key, rid=f"{tag}-{i}")

    started = time.monotonic()
    answers = list(await asyncio.gather(*(one(i) for i in range(20))))  # at once: one lookup in flight
    answers += [await one(100 + i) for i in range(20)]  # then one after another: the miss is remembered
    elapsed_s = time.monotonic() - started
    for resp in answers:
        assert_envelope(resp, 401, "INVALID_API_KEY")
    await eventually(lambda: _async(_lookups(stack, tag) >= 1), timeout_s=5)
    # One lookup per key per miss TTL; a slow box that took longer than the TTL may need another.
    assert _lookups(stack, tag) <= 1 + int(elapsed_s / limits.AUTH_MISS_TTL_S), (elapsed_s, _lookups(stack, tag))


async def test_a_malformed_key_costs_no_lookup(stack: Stack) -> None:
    tag = f"bad-{uuid.uuid4().hex[:12]}"
    for i, key in enumerate([b"sk_test_123", b"ivsdk_" + b"y" * 500, b"ivsdk_\xff\xfe", b"ivsdk_ x"]):
        resp = await _get(stack, "/api/tenant", source="127.78.0.2", key=key, rid=f"{tag}-{i}")
        assert_envelope(resp, 401, "INVALID_API_KEY")
    assert _lookups(stack, tag) == 0


async def _exhaust(stack: Stack, source: str) -> list[hs.RawResponse]:
    """Fail with fresh unknown keys from `source` until it is limited (bounded)."""
    seen = []
    for _ in range(limits.AUTH_FAILURES_BURST * 3):
        resp = await _get(stack, "/api/tenant", source=source, key=_unknown_key())
        seen.append(resp)
        if resp.status == 429:
            return seen
    raise AssertionError(f"never limited: {[r.status for r in seen]}")


async def test_failed_authentications_are_limited_per_address(api: Api, stack: Stack) -> None:
    source, other = "127.78.1.1", "127.78.1.2"
    known = await api.create_tenant()
    assert (await _get(stack, "/api/tenant", source=source, key=known["sdk_key"])).status == 200
    started = time.monotonic()
    seen = await _exhaust(stack, source)
    refused = [r for r in seen if r.status == 401]
    for resp in refused:
        assert_envelope(resp, 401, "INVALID_API_KEY")
    # The burst, and what refilled meanwhile.
    allowed = limits.AUTH_FAILURES_BURST + (time.monotonic() - started) * limits.AUTH_FAILURES_PER_S + 1
    assert limits.AUTH_FAILURES_BURST <= len(refused) <= allowed, len(refused)
    assert_envelope(seen[-1], 429, "RATE_LIMITED")
    assert 1 <= int(seen[-1].headers["Retry-After"]) <= 60
    # A key this gateway already knows costs nothing and keeps working (a partner behind the same NAT).
    assert (await _get(stack, "/api/tenant", source=source, key=known["sdk_key"])).status == 200
    # Anything that would need a lookup or a comparison waits, a fresh valid key and the admin token too.
    fresh = await api.create_tenant()
    await _exhaust(stack, source)
    assert_envelope(await _get(stack, "/api/tenant", source=source, key=fresh["sdk_key"]), 429, "RATE_LIMITED")
    await _exhaust(stack, source)
    assert_envelope(
        await _get(stack, "/admin/ledger/check", source=source, bearer=api.admin_token), 429, "RATE_LIMITED"
    )
    # Another address is not limited.
    assert_envelope(await _get(stack, "/api/tenant", source=other, key=_unknown_key()), 401, "INVALID_API_KEY")
    assert (await _get(stack, "/admin/ledger/check", source=other, bearer=api.admin_token)).status == 200


async def test_unknown_keys_sent_at_once_are_limited_too(stack: Stack) -> None:
    """Many different unknown keys from one address in flight together: each is a lookup, and the
    limit must hold for them as it does for keys sent one after another (it once counted a
    failure only after its lookup, so a wave sent together all got through)."""
    tag = f"wave-{uuid.uuid4().hex[:12]}"
    wave = 3 * limits.AUTH_FAILURES_BURST

    async def one(i: int) -> hs.RawResponse:
        return await _get(stack, "/api/tenant", source="127.78.3.1", key=_unknown_key(), rid=f"{tag}-{i}")

    answers = await asyncio.gather(*(one(i) for i in range(wave)))
    statuses = sorted(r.status for r in answers)
    assert set(statuses) == {401, 429}, statuses
    # The burst, and at most what refilled while the wave was answered.
    assert statuses.count(401) <= limits.AUTH_FAILURES_BURST + 2, statuses
    assert _lookups(stack, tag) <= limits.AUTH_FAILURES_BURST + 2


async def test_guessing_the_admin_token_is_limited_per_address(stack: Stack) -> None:
    source = "127.78.2.1"
    statuses = []
    for _ in range(limits.AUTH_FAILURES_BURST * 3):
        resp = await _get(stack, "/admin/ledger/check", source=source, bearer="guess")
        statuses.append(resp.status)
        if resp.status == 429:
            assert_envelope(resp, 429, "RATE_LIMITED")
            break
    assert statuses[: limits.AUTH_FAILURES_BURST] == [401] * limits.AUTH_FAILURES_BURST and statuses[-1] == 429


def test_the_failure_limiter_is_bounded_and_refills() -> None:
    now = [0.0]
    guard = AuthFailures(burst=3, rate_per_s=1.0, addresses_max=100, clock=lambda: now[0])
    for _ in range(3):
        assert guard.retry_after_s("10.0.0.1") == 0
        guard.failed("10.0.0.1")
    assert guard.retry_after_s("10.0.0.1") == 1 and guard.retry_after_s("10.0.0.2") == 0
    now[0] += 1.0
    assert guard.retry_after_s("10.0.0.1") == 0  # one more try a second
    for i in range(1000):
        guard.failed(f"10.1.{i // 250}.{i % 250}")
    assert len(guard) <= 100
    # One host's IPv6 /64 is one address: rotating through it buys nothing.
    for i in range(3):
        guard.failed(f"2001:db8::{i + 1}")
    assert guard.retry_after_s("2001:db8::ffff") >= 1
