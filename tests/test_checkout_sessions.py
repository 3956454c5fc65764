"""Hosted checkout sessions with the SDK key (the seed's "Create a checkout session"): what minting
answers and what the token carries (and does not), the refusals, forged tokens, and the state a partner polls
(open, completed, cancelled, expired), tenant by tenant.

The expiry test restarts the payments service with a 2-second session life: it is the last test
here, and puts the service back as it was whatever happens.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import secrets
import urllib.parse
from typing import Any

import jwt
import pytest

from devstack.stack import Stack
from tests.checkout_support import (
    CANCEL_URL,
    METADATA,
    SUCCESS_URL,
    TTL_S,
    assert_no_store,
    assert_paid,
    cancel,
    claims,
    confirm,
    csp_directives,
    flip,
    foreign_token,
    mint,
    mint_raw,
    page_html,
    page_json,
    pay,
    refused_everywhere,
    resigned,
    session_body,
    session_intents,
    signed,
    state,
    status_of,
    view,
    with_claims,
)
from tests.helpers import Api, Response, assert_envelope, eventually
from tests.payments_support import THREE_DS, VISA, balance, buy, check_ledger, email, sim

CLAIMS = {"iss", "jti", "tid", "sub", "usd", "surl", "curl", "mh", "iat", "exp"}
STATE_KEYS = {
    "session_id",
    "status",
    "player_email",
    "usd_amount",
    "metadata",
    "order_id",
    "transaction_id",
    "created_at",
    "expires_at",
    "completed_at",
}


def _utc(text: str) -> datetime.datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), text
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


# -- minting --------------------------------------------------------------------------------------


async def test_mint_answers_the_seeds_four_fields_and_a_token_without_secrets(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    tag = email().partition("@")[0]
    resp = await mint_raw(api, t, f"  {tag.upper()}@Example.COM ")
    assert resp.status == 201, resp
    assert set(resp.body) == {"session_id", "checkout_url", "expires_at", "expires_in_seconds"}
    assert resp.body["expires_in_seconds"] == TTL_S
    sid, url = resp.body["session_id"], resp.body["checkout_url"]
    assert re.fullmatch(r"cs_[0-9A-Z]{26}", sid), sid
    prefix = f"{stack.gateway_url}/checkout/?session="
    assert url.startswith(prefix), url
    token = url.removeprefix(prefix)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token), token

    kid = stack.env["INVO_CHECKOUT_KEYS"].split(",")[0].partition(":")[0]
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": kid, "typ": "JWT"}
    c = claims(token)
    assert set(c) == CLAIMS, c
    assert c["iss"] == "invo" and c["jti"] == sid and c["tid"] == t["tenant_id"]
    assert c["sub"] == f"{tag}@example.com"  # normalised: trimmed, lower case
    assert c["usd"] == 1000 and c["surl"] == SUCCESS_URL and c["curl"] == CANCEL_URL
    assert re.fullmatch(r"[0-9a-f]{64}", c["mh"]), c["mh"]
    assert c["exp"] == c["iat"] + TTL_S
    assert _utc(resp.body["expires_at"]).timestamp() == c["exp"]
    # Nothing secret: no key of the tenant, of the processor or of the token itself, and not the metadata.
    secret_values = [
        t["sdk_key"],
        t["webhook_signing_secret"],
        stack.env["INVO_PROCESSOR_SECRET_KEY"],
        stack.env["INVO_PROCESSOR_WEBHOOK_SECRET"],
        stack.env["INVO_CHECKOUT_KEYS"].partition(":")[2],
    ]
    text = str(c) + token
    for value in secret_values:
        assert value not in text
    assert "u_42" not in text and "starter" not in text

    read = await state(api, t, sid)
    assert read.status == 200, read
    assert set(read.body) == STATE_KEYS
    assert read.body == {
        "session_id": sid,
        "status": "open",
        "player_email": f"{tag}@example.com",
        "usd_amount": "10.00",
        "metadata": METADATA,
        "order_id": None,
        "transaction_id": None,
        "created_at": read.body["created_at"],
        "expires_at": resp.body["expires_at"],
        "completed_at": None,
    }
    assert _utc(read.body["expires_at"]) - _utc(read.body["created_at"]) == datetime.timedelta(seconds=TTL_S)

    # A second session for the same player and amount is a session of its own, with its own token.
    again = await mint(api, t, f"{tag}@example.com")
    assert again.session_id != sid and again.token != token
    assert claims(again.token)["mh"] == c["mh"]  # the same metadata hashes the same
    other = await mint(api, t, f"{tag}@example.com", metadata={"coin_pack": "mega"})
    assert claims(other.token)["mh"] != c["mh"]


MISSING = object()


@pytest.mark.parametrize(
    ("changes", "code", "param"),
    [
        ({"player_email": MISSING}, "MISSING_PARAMETER", "player_email"),
        ({"player_email": "not-an-email"}, "INVALID_PLAYER_EMAIL", "player_email"),
        ({"usd_amount": MISSING}, "MISSING_PARAMETER", "usd_amount"),
        ({"usd_amount": "0.10"}, "INVALID_AMOUNT", "usd_amount"),
        ({"usd_amount": "0.49"}, "INVALID_AMOUNT", "usd_amount"),
        ({"usd_amount": "1000.01"}, "INVALID_AMOUNT", "usd_amount"),
        ({"usd_amount": "0.00"}, "INVALID_AMOUNT", "usd_amount"),
        ({"usd_amount": "-5.00"}, "INVALID_AMOUNT", "usd_amount"),
        ({"usd_amount": "10.001"}, "INVALID_AMOUNT", "usd_amount"),
        ({"usd_amount": "ten"}, "INVALID_AMOUNT", "usd_amount"),
        ({"success_url": MISSING}, "MISSING_PARAMETER", "success_url"),
        ({"cancel_url": MISSING}, "MISSING_PARAMETER", "cancel_url"),
        ({"success_url": "http://partner.example/ok"}, "INVALID_PARAMETER", "success_url"),
        ({"cancel_url": "http://partner.example/no"}, "INVALID_PARAMETER", "cancel_url"),
        ({"success_url": "http://10.0.0.1/ok"}, "INVALID_PARAMETER", "success_url"),
        ({"success_url": "ftp://partner.example/ok"}, "INVALID_PARAMETER", "success_url"),
        ({"success_url": "javascript:alert(1)"}, "INVALID_PARAMETER", "success_url"),
        ({"success_url": "/store/success"}, "INVALID_PARAMETER", "success_url"),
        ({"success_url": "https://user:pw@partner.example/ok"}, "INVALID_PARAMETER", "success_url"),
        ({"cancel_url": "https://user@partner.example/no"}, "INVALID_PARAMETER", "cancel_url"),
        ({"success_url": "https://partner.example:99999/ok"}, "INVALID_PARAMETER", "success_url"),
        ({"success_url": "https://partner.example/" + "a" * 2048}, "INVALID_PARAMETER", "success_url"),
        ({"metadata": "not an object"}, "INVALID_PARAMETER", "metadata"),
        ({"coupon": "FREE"}, "UNKNOWN_FIELD", "coupon"),
    ],
)
async def test_mint_refuses_bad_input_with_the_field_named(
    api: Api, changes: dict[str, Any], code: str, param: str
) -> None:
    t = await api.create_tenant()
    body = session_body(email())
    for name, value in changes.items():
        if value is MISSING:
            del body[name]
        else:
            body[name] = value
    resp = await api.post("/api/checkout/sessions", key=t["sdk_key"], json=body)
    assert_envelope(resp, 400, code)
    assert resp.body["param"] == param, resp.body
    assert resp.body["error"] == "invalid_request"


async def test_mint_accepts_loopback_http_in_development(api: Api) -> None:
    t = await api.create_tenant()
    for success, cancel_ in (
        ("http://127.0.0.1:9000/ok", "http://localhost/no"),
        ("http://[::1]:9000/ok", "https://partner.example/no"),
    ):
        m = await mint(api, t, email(), success_url=success, cancel_url=cancel_)
        c = claims(m.token)
        assert (c["surl"], c["curl"]) == (success, cancel_)


async def test_mint_with_the_caps_already_reached_is_429(api: Api) -> None:
    t = await api.create_tenant(spending_caps={"hourly_usd": "15.00"})
    player = email()
    assert (await buy(api, t, player)).status == 200
    over = await mint_raw(api, t, player)
    assert_envelope(over, 429, "SPENDING_LIMIT_EXCEEDED")
    assert over.body["limit"] == "hourly" and "15.00" in over.body["message"]
    # What is left of the cap can still be minted, and another player has a cap of their own.
    assert (await mint_raw(api, t, player, usd_amount="5.00")).status == 201
    assert (await mint_raw(api, t, email())).status == 201


async def test_mint_and_read_need_the_sdk_key(api: Api) -> None:
    t = await api.create_tenant()
    m = await mint(api, t, email())
    body = session_body(email())
    assert_envelope(await api.post("/api/checkout/sessions", json=body), 401, "MISSING_API_KEY")
    assert_envelope(
        await api.post("/api/checkout/sessions", key="ivsdk_" + "x" * 43, json=body), 401, "INVALID_API_KEY"
    )
    assert_envelope(await api.get(f"/api/checkout/sessions/{m.session_id}"), 401, "MISSING_API_KEY")
    # The session token is not an SDK key either.
    assert_envelope(await api.post("/api/checkout/sessions", key=m.token, json=body), 401, "INVALID_API_KEY")


# -- the state a partner polls --------------------------------------------------------------------


async def test_state_open_then_completed_with_the_order(api: Api, stack: Stack) -> None:
    t = await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    assert await status_of(api, t, m.session_id) == "open"
    paid = await pay(api, m.token, VISA)
    assert_paid(paid, new_balance="100")
    read = await state(api, t, m.session_id)
    assert read.status == 200, read
    assert read.body["status"] == "completed"
    assert read.body["order_id"] == paid.body["order_id"]
    assert read.body["transaction_id"] == paid.body["transaction_id"]
    assert _utc(read.body["completed_at"]) >= _utc(read.body["created_at"])
    assert read.body["metadata"] == METADATA
    # Paid is final: cancelling it is refused and the state stays completed.
    assert_envelope(await cancel(api, m.token), 409, "SESSION_ALREADY_CONSUMED")
    assert await status_of(api, t, m.session_id) == "completed"
    assert await balance(api, t, player) == "100"


async def test_state_cancelled_after_the_player_cancels(api: Api) -> None:
    t = await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    done = await cancel(api, m.token)
    assert done.status == 200, done
    assert done.body == {"status": "cancelled", "cancel_url": CANCEL_URL}
    read = await state(api, t, m.session_id)
    assert read.body["status"] == "cancelled" and read.body["order_id"] is None, read
    # A cancelled session cannot be paid, viewed or opened again; cancelling twice is harmless.
    assert_envelope(await pay(api, m.token, VISA), 409, "SESSION_CANCELLED")
    assert_envelope(await view(api, m.token), 409, "SESSION_CANCELLED")
    assert_envelope(await page_json(api, m.token), 409, "SESSION_CANCELLED")
    again = await cancel(api, m.token)
    assert again.status == 200 and again.body == done.body, again
    assert await status_of(api, t, m.session_id) == "cancelled"
    assert await balance(api, t, player) == "0"


async def test_unknown_and_other_tenants_sessions_are_not_found(api: Api) -> None:
    a, b = await api.create_tenant(), await api.create_tenant()
    m = await mint(api, a, email())
    for sid in ("cs_" + "0" * 26, "nope", "cs_" + "Z" * 200, "ord_" + "0" * 26):
        assert_envelope(await state(api, a, sid), 404, "SESSION_NOT_FOUND")
    foreign = await state(api, b, m.session_id)
    assert_envelope(foreign, 404, "SESSION_NOT_FOUND")
    assert foreign.body["message"] == (await state(api, a, "cs_" + "0" * 26)).body["message"]
    assert await status_of(api, a, m.session_id) == "open"


# -- forged tokens --------------------------------------------------------------------------------


async def test_tampered_and_foreign_tokens_are_401_and_change_nothing(api: Api, stack: Stack) -> None:
    t, other = await api.create_tenant(), await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    theirs = await mint(api, other, email())
    header, payload, _ = m.token.split(".")
    bad = [
        flip(m.token, 1, len(payload) // 2),  # one character of the claims
        flip(m.token, 1, 10),
        flip(m.token, 2, 5),  # one character of the signature
        f"{header}.{payload}.{theirs.token.split('.')[2]}",  # another session's signature
        with_claims(m.token, tid=other["tenant_id"]),  # names the other tenant, signature kept
        with_claims(m.token, usd=1),
        with_claims(m.token, jti=theirs.session_id),
        foreign_token(m.token),  # a key we never had, kid "zz"
        # Our own key, but claims that disagree with the stored session: the session decides.
        resigned(stack, m.token, tid=other["tenant_id"]),
        resigned(stack, m.token, usd=50),
        resigned(stack, m.token, sub="someone.else@example.com"),
        resigned(stack, m.token, surl="https://evil.example/"),
        resigned(stack, theirs.token, tid=t["tenant_id"]),  # tenant B's session under tenant A
        f"{header}.{payload}.",  # unsigned
        "not-a-token",
    ]
    for token in bad:
        await refused_everywhere(api, token)
    missing = await api.get("/checkout/api/session")
    assert_envelope(missing, 401, "INVALID_SESSION")
    sdk_key = await api.get("/checkout/api/session", headers={"Authorization": f"Bearer {t['sdk_key']}"})
    assert_envelope(sdk_key, 401, "INVALID_SESSION")

    # Nothing changed: both sessions open, no order, no charge, no credit; the real token still pays.
    for tenant, s in ((t, m), (other, theirs)):
        read = await state(api, tenant, s.session_id)
        assert (read.body["status"], read.body["order_id"]) == ("open", None), read
        assert await session_intents(api, stack, s.session_id) == []
    assert claims(m.token)["tid"] == t["tenant_id"]
    assert await balance(api, t, player) == "0"
    assert_paid(await pay(api, m.token, VISA), new_balance="100")
    assert await status_of(api, other, theirs.session_id) == "open"
    await check_ledger(api)


async def test_refusals_of_the_checkout_surface_are_not_cached_either(api: Api) -> None:
    """The surface's own promise: no answer is cached, none sends a referrer (its URLs hold a token)."""
    t = await api.create_tenant()
    m = await mint(api, t, email())
    assert_paid(await pay(api, m.token, VISA), new_balance="100")
    for resp in (await pay(api, m.token, VISA), await page_json(api, m.token), await view(api, "x.y.z")):
        assert resp.status in (401, 409), resp
        assert_no_store(resp)


# -- the page itself, as a browser gets it ---------------------------------------------------------

BOOT_RE = re.compile(r'<script type="application/json" id="invo-boot">(.*?)</script>', re.S)


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _assert_html(resp: Response, status: int) -> str:
    assert resp.status == status, resp
    assert resp.headers["Content-Type"].startswith("text/html"), dict(resp.headers)
    assert_no_store(resp)  # the URL holds a token: never cached, never sent on as a referrer
    assert isinstance(resp.body, str)
    return resp.body


async def test_the_open_page_runs_only_its_own_and_the_processors_script_framed_by_the_partner(
    api: Api, stack: Stack
) -> None:
    t = await api.create_tenant()
    back = "https://shop.partner.example:8443/back"
    m = await mint(api, t, email(), cancel_url=back)
    resp = await page_html(api, m.token)
    body = _assert_html(resp, 200)
    policy = csp_directives(resp)
    # Embedding is the seed's: the partner's own origins (success and cancel pages), nobody else.
    assert policy["frame-ancestors"] == ["'self'", _origin(SUCCESS_URL), _origin(back)], policy
    assert policy["script-src"] == ["'self'", _origin(stack.env["INVO_PROCESSOR_JS_URL"])], policy
    assert policy["style-src"] == ["'self'"] and policy["default-src"] == ["'none'"], policy
    for name, sources in policy.items():
        assert not {"*", "'unsafe-inline'", "'unsafe-eval'"} & set(sources), policy
        assert "data:" not in sources or name == "img-src", policy
    # The policy allows no inline code, so the page has none: each script is a file, but the boot data.
    for attrs, content in re.findall(r"<script\b([^>]*)>(.*?)</script>", body, re.S):
        if 'type="application/json"' not in attrs:
            assert "src=" in attrs and not content.strip(), attrs
    assert "<style" not in body and " style=" not in body

    found = BOOT_RE.search(body)
    assert found, body
    boot = json.loads(found.group(1))
    assert boot["token"] == m.token and boot["success_origin"] == _origin(SUCCESS_URL)
    assert boot["processor"]["publishable_key"] == stack.env["INVO_PROCESSOR_PUBLISHABLE_KEY"]
    assert (boot["session"]["session_id"], boot["session"]["status"]) == (m.session_id, "open")
    for value in (
        t["sdk_key"],
        t["webhook_signing_secret"],
        stack.env["INVO_PROCESSOR_SECRET_KEY"],
        stack.env["INVO_CHECKOUT_KEYS"].split(",")[0].partition(":")[2],
    ):
        assert value not in body


async def test_refused_links_are_pages_for_a_browser_and_change_nothing(api: Api, stack: Stack) -> None:
    t, other = await api.create_tenant(), await api.create_tenant()
    player = email()
    m = await mint(api, t, player)
    kid, _, ours = stack.env["INVO_CHECKOUT_KEYS"].split(",")[0].partition(":")
    c = claims(m.token)
    forged = [
        flip(m.token, 1, 10),  # one character of the claims
        foreign_token(m.token),  # a key we never had, kid "zz"
        signed(c, secret=secrets.token_hex(20), kid=kid),  # our kid, a random 40-character key
        signed({**c, "tid": other["tenant_id"]}, secret=secrets.token_hex(20), kid=kid),
        signed(c, secret=ours, kid="zz"),  # our key under a kid we never issued
    ]
    for token in forged:
        body = _assert_html(await page_html(api, token), 401)
        assert "not valid" in body and token not in body
        boot = BOOT_RE.search(body)
        assert boot is None or boot.group(1) == "", body  # no session, no token, for a refused link
        assert_envelope(await view(api, token), 401, "INVALID_SESSION")
        assert_envelope(await pay(api, token, VISA), 401, "INVALID_SESSION")
    read = await state(api, t, m.session_id)
    assert (read.body["status"], read.body["order_id"]) == ("open", None), read
    assert await session_intents(api, stack, m.session_id) == []
    assert await balance(api, t, player) == "0"

    # Used and cancelled links are pages of their own (the JSON client's 409s are tested above).
    assert_paid(await pay(api, m.token, VISA), new_balance="100")
    assert "already been used" in _assert_html(await page_html(api, m.token), 409)
    gone = await mint(api, t, email())
    assert (await cancel(api, gone.token)).status == 200
    assert "cancelled" in _assert_html(await page_html(api, gone.token), 409)
    await check_ledger(api)


# -- expiry (last: it restarts the payments service) ---------------------------------------------


async def test_an_expired_session_is_410_everywhere_and_a_challenge_under_way_can_finish(
    api: Api, stack: Stack
) -> None:
    before = dict(stack.process_env.get("payments", {}))
    stack.set_process_env("payments", {**before, "INVO_CHECKOUT_SESSION_TTL_S": "2"})
    try:
        await asyncio.to_thread(stack.restart, "payments")
        t = await api.create_tenant()
        player, challenged = email(), email()
        m = await mint(api, t, player)
        assert m.body["expires_in_seconds"] == 2
        assert claims(m.token)["exp"] == claims(m.token)["iat"] + 2
        # A second session starts its 3-D Secure challenge before it expires.
        c = await mint(api, t, challenged)
        start = await pay(api, c.token, THREE_DS)
        assert start.status == 200 and start.body["status"] == "requires_action", start

        async def expired() -> bool:
            return await status_of(api, t, m.session_id) == "expired"

        await eventually(expired, timeout_s=10)
        assert_envelope(await pay(api, m.token, VISA), 410, "SESSION_EXPIRED")
        assert_envelope(await view(api, m.token), 410, "SESSION_EXPIRED")
        assert_envelope(await page_json(api, m.token), 410, "SESSION_EXPIRED")
        assert await status_of(api, t, m.session_id) == "expired"
        assert await balance(api, t, player) == "0"

        # The bank's challenge outlives the 15 minutes: the page still sees it and can confirm it.
        assert await status_of(api, t, c.session_id) == "expired"
        seen = await view(api, c.token)
        assert seen.status == 200, seen
        assert seen.body["status"] == "expired" and seen.body["order"]["status"] == "requires_action", seen.body
        pi = start.body["client_secret"].partition("_secret_")[0]
        await sim(api, stack, "three_d_secure", {"payment_intent": pi, "result": "succeed"})
        done = await confirm(api, c.token)
        assert_paid(done, new_balance="100")
        assert await status_of(api, t, c.session_id) == "completed"
        assert await balance(api, t, challenged) == "100"
        # Once paid it is consumed, expired or not.
        assert_envelope(await pay(api, c.token, VISA), 409, "SESSION_ALREADY_CONSUMED")
    finally:
        stack.set_process_env("payments", before)
        await asyncio.to_thread(stack.restart, "payments")
    # Back to 15 minutes.
    assert (await mint(api, await api.create_tenant(), email())).body["expires_in_seconds"] == TTL_S
    await check_ledger(api)
