"""The sender's PIN (wrong, malformed, expired, resent), the verification window, the SMS limits,
phone numbers and what the transfers schema keeps. Clocks are moved with `ts.shift`, never waited."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from devstack.stack import Stack
from services.common.config import Settings
from tests import transfers_support as ts
from tests.helpers import Api, Response, assert_envelope, eventually


def wrong(pin: str) -> str:
    return f"{(int(pin) + 1) % 10**6:06d}"


async def started(
    api: Api, src: dict[str, Any], dst: dict[str, Any], player: str, amount: str = "100"
) -> tuple[str, str, str]:
    """A self-transfer waiting for its PIN: (transfer_id, sender phone, PIN)."""
    sender_phone = ts.phone()
    resp = await ts.initiate_transfer(api, src, dst, player, amount, sender_phone)
    assert resp.status == 201, resp
    assert resp.body["status"] == "pending_verification"
    return resp.body["transfer_id"], sender_phone, await ts.pin_of(api, sender_phone)


async def ended(api: Api, t: dict[str, Any], transfer_id: str, status: str) -> dict[str, Any]:
    """The transfer once it reached `status` (a return finishes in the request or in the sweep)."""

    async def done() -> dict[str, Any]:
        resp = await ts.get(api, t, transfer_id)
        assert resp.status == 200, resp
        return dict(resp.body) if resp.body["status"] == status else {}

    found: dict[str, Any] = await eventually(done, timeout_s=15)
    return found


async def listed(api: Api, t: dict[str, Any]) -> list[str]:
    resp = await api.get("/api/transfers?limit=100", key=t["sdk_key"])
    assert resp.status == 200, resp
    return [x["transfer_id"] for x in resp.body["data"]]


def retry_after(resp: Response) -> int:
    return int(resp.headers["Retry-After"])


# -- wrong PINs ----------------------------------------------------------------------------------


async def test_five_wrong_pins_cancel_the_transfer_and_give_the_money_back(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "110")
    tid, _, pin = await started(api, src, dst, player)
    assert await ts.balance(api, src, player) == "0"

    for remaining in (4, 3, 2, 1):
        resp = await ts.verify(api, src, tid, wrong(pin))
        assert_envelope(resp, 400, "INCORRECT_PIN")
        assert resp.body["attempts_remaining"] == remaining and resp.body["param"] == "pin"
        shown = await ts.get(api, src, tid)
        assert shown.body["status"] == "pending_verification"
        assert shown.body["pin_attempts_remaining"] == remaining
    locked = await ts.verify(api, src, tid, wrong(pin))
    assert_envelope(locked, 403, "PIN_LOCKED")
    assert locked.body["transfer_id"] == tid

    body = await ended(api, src, tid, "cancelled")
    assert body["end_reason"] == "pin_locked" and body["new_balance"] == "110"
    assert await ts.balance(api, src, player) == "110"  # amount and fee, all of it
    for t, role in ((src, "source"), (dst, "destination")):
        (event,) = await ts.transfer_events(stack, t["tenant_id"], tid)
        assert event["event_type"] == "transfer.cancelled"
        assert event["data"]["role"] == role and event["data"]["reason"] == "pin_locked"
        assert event["data"]["status"] == "cancelled" and event["data"]["fee_share"] == "0"
    assert event["data"]["new_balance"] is None  # the destination's wallet never moved

    assert_envelope(await ts.verify(api, src, tid, pin), 409, "TRANSFER_CANCELLED")
    assert_envelope(await ts.resend(api, src, tid), 409, "TRANSFER_CANCELLED")
    assert await ts.balance(api, src, player) == "110"
    await ts.check_ledger(api)


async def test_wrong_tries_count_per_transfer_across_a_resend(api: Api, stack: Stack) -> None:
    (src,) = await ts.tenants(api, 1)
    player, sender_phone = ts.email(), ts.phone()
    await ts.fund(api, src, player, "60")
    resp = await ts.initiate_send(api, src, player, "50", sender_phone, ts.phone())
    assert resp.status == 201, resp
    tid = resp.body["transfer_id"]
    first = await ts.pin_of(api, sender_phone)
    for remaining in (4, 3, 2):
        resp = await ts.verify(api, src, tid, wrong(first))
        assert_envelope(resp, 400, "INCORRECT_PIN")
        assert resp.body["attempts_remaining"] == remaining

    await ts.shift(stack, tid, "pin_sent_at", seconds=31)
    resent = await ts.resend(api, src, tid)
    assert resent.status == 200, resent
    assert resent.body["pin_attempts_remaining"] == 2  # a new PIN buys no new guesses
    second = await ts.pin_of(api, sender_phone, after=1)
    resp = await ts.verify(api, src, tid, wrong(second))
    assert_envelope(resp, 400, "INCORRECT_PIN")
    assert resp.body["attempts_remaining"] == 1
    assert_envelope(await ts.verify(api, src, tid, wrong(second)), 403, "PIN_LOCKED")

    body = await ended(api, src, tid, "cancelled")
    assert body["end_reason"] == "pin_locked"
    assert_envelope(await ts.verify(api, src, tid, second), 409, "TRANSFER_CANCELLED")
    assert await ts.balance(api, src, player) == "60"
    (event,) = await ts.transfer_events(stack, src["tenant_id"], tid)
    assert event["event_type"] == "transfer.cancelled" and event["data"]["destination_tenant_id"] is None
    assert event["data"]["new_balance"] == "60"
    await ts.check_ledger(api)


MALFORMED_PINS = ("12345", "abcdef", "1234567", "12 456", "")


async def test_a_malformed_pin_is_refused_and_not_counted(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "110")
    tid, _, pin = await started(api, src, dst, player)
    for bad in MALFORMED_PINS:
        resp = await ts.verify(api, src, tid, bad)
        assert resp.status == 400, (bad, resp)
        assert resp.body["param"] == "pin" and resp.body["error_code"] != "INCORRECT_PIN", (bad, resp)
    shown = await ts.get(api, src, tid)
    assert shown.body["pin_attempts_remaining"] == 5
    resp = await ts.verify(api, src, tid, wrong(pin))
    assert_envelope(resp, 400, "INCORRECT_PIN")
    assert resp.body["attempts_remaining"] == 4
    ok = await ts.verify(api, src, tid, pin)
    assert ok.status == 200 and ok.body["status"] == "claimable", ok
    await ts.check_ledger(api)


async def test_a_malformed_pin_has_one_error_code(api: Api) -> None:
    """The README: a 400 naming a field is UNKNOWN_FIELD, MISSING_PARAMETER, INVALID_PARAMETER or the
    field's own code; whether the gateway or the service noticed must not change it."""
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "110")
    tid, _, _ = await started(api, src, dst, player)
    codes = {bad: (await ts.verify(api, src, tid, bad)).body["error_code"] for bad in MALFORMED_PINS}
    assert set(codes.values()) == {"INVALID_PARAMETER"}, codes
    await ts.check_ledger(api)


# -- expiry and resends --------------------------------------------------------------------------


async def test_an_expired_pin_is_refused_and_a_resent_one_verifies(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "110")
    tid, sender_phone, old = await started(api, src, dst, player)
    await ts.shift(stack, tid, "pin_expires_at")
    expired = await ts.verify(api, src, tid, old)
    assert_envelope(expired, 410, "PIN_EXPIRED")
    assert expired.body["pin_sends_remaining"] == 2
    shown = await ts.get(api, src, tid)
    assert shown.body["status"] == "pending_verification" and shown.body["pin_attempts_remaining"] == 5

    await ts.shift(stack, tid, "pin_sent_at", seconds=31)
    resent = await ts.resend(api, src, tid)
    assert resent.status == 200, resent
    assert resent.body["pin_sends_remaining"] == 1 and resent.body["duplicate"] is False
    new = await ts.pin_of(api, sender_phone, after=1)
    assert new != old  # one chance in a million; a PIN equal to the last would make the next line moot
    stale = await ts.verify(api, src, tid, old)
    assert_envelope(stale, 400, "INCORRECT_PIN")
    assert stale.body["attempts_remaining"] == 4
    ok = await ts.verify(api, src, tid, new)
    assert ok.status == 200 and ok.body["status"] == "claimable", ok
    claimed = await ts.claim(api, dst, ok.body["claim_code"], ts.email())
    assert claimed.status == 200, claimed
    await ts.check_ledger(api)


async def test_resends_have_a_cool_down_and_a_limit(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "110")
    tid, sender_phone, _ = await started(api, src, dst, player)
    shown = await ts.get(api, src, tid)
    assert shown.body["pin_sends_remaining"] == 2

    for sends_remaining in (1, 0):
        soon = await ts.resend(api, src, tid)
        assert_envelope(soon, 429, "PIN_RESEND_TOO_SOON")
        assert 1 <= retry_after(soon) <= 30, soon.headers
        await ts.shift(stack, tid, "pin_sent_at", seconds=31)
        resent = await ts.resend(api, src, tid)
        assert resent.status == 200, resent
        assert resent.body["pin_sends_remaining"] == sends_remaining
    await ts.shift(stack, tid, "pin_sent_at", seconds=31)
    limit = await ts.resend(api, src, tid)
    assert_envelope(limit, 409, "PIN_SEND_LIMIT_REACHED")
    pin_texts = [b for b in await ts.texts(api, sender_phone) if ts.PIN_RE.match(b)]
    assert len(pin_texts) == 3

    ok = await ts.verify(api, src, tid, await ts.pin_of(api, sender_phone, after=2))
    assert ok.status == 200, ok
    assert_envelope(await ts.resend(api, src, tid), 409, "TRANSFER_NOT_AWAITING_PIN")
    assert len([b for b in await ts.texts(api, sender_phone) if ts.PIN_RE.match(b)]) == 3
    await ts.check_ledger(api)


async def test_a_transfer_never_verified_expires_and_gives_the_money_back(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "33")
    tid, _, pin = await started(api, src, dst, player, "30")
    await ts.shift(stack, tid, "verify_by")
    await ts.sweep(stack)
    body = await ended(api, src, tid, "expired")
    assert body["end_reason"] == "verification_expired" and body["new_balance"] == "33"
    assert await ts.balance(api, src, player) == "33"
    for t, role in ((src, "source"), (dst, "destination")):
        (event,) = await ts.transfer_events(stack, t["tenant_id"], tid)
        assert event["event_type"] == "transfer.expired"
        assert event["data"]["role"] == role and event["data"]["reason"] == "verification_expired"
    assert_envelope(await ts.verify(api, src, tid, pin), 410, "TRANSFER_EXPIRED")
    assert_envelope(await ts.resend(api, src, tid), 410, "TRANSFER_EXPIRED")
    await ts.check_ledger(api)


# -- SMS limits ---------------------------------------------------------------------------------


async def test_a_phone_gets_ten_texts_an_hour(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player, sender_phone = ts.email(), ts.phone()
    await ts.fund(api, src, player, "100")
    for _ in range(5):  # each reserves the PIN and the claim code for the sender's phone
        resp = await ts.initiate_transfer(api, src, dst, player, "10", sender_phone)
        assert resp.status == 201, resp
    assert await ts.balance(api, src, player) == "45"
    refused = await ts.initiate_transfer(api, src, dst, player, "10", sender_phone)
    assert_envelope(refused, 429, "SMS_RATE_LIMITED")
    assert refused.body["limit"] == "phone number"
    assert 3000 <= retry_after(refused) <= 3600, refused.headers
    # The same number as recipient of a send is refused too, whoever sends.
    other = ts.email()
    await ts.fund(api, src, other, "11")
    to_it = await ts.initiate_send(api, src, other, "10", ts.phone(), sender_phone)
    assert_envelope(to_it, 429, "SMS_RATE_LIMITED")
    assert to_it.body["limit"] == "phone number"
    assert await ts.balance(api, src, player) == "45" and await ts.balance(api, src, other) == "11"
    assert len(await listed(api, src)) == 5
    await ts.check_ledger(api)


async def insert_texts(stack: Stack, transfer_id: str, tenant_id: str, n: int) -> None:
    """`n` texts of the last hour for a tenant (one of its transfers' rows, for the foreign key)."""
    settings = Settings.from_env(stack.env)
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        await conn.executemany(
            f'INSERT INTO "{settings.schema("transfers")}".sms_messages'
            " (message_id, transfer_id, tenant_id, purpose, phone, status) VALUES ($1, $2, $3, 'pin', $4, 'sent')",
            [(f"sms_test{uuid.uuid4().hex}", transfer_id, tenant_id, f"+1999{i:07d}") for i in range(n)],
        )
    finally:
        await conn.close()


async def test_a_tenant_sends_a_thousand_texts_an_hour(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "100")
    tid, _, _ = await started(api, src, dst, player, "10")  # 2 texts
    await insert_texts(stack, tid, src["tenant_id"], 996)  # 998
    fits = await ts.initiate_transfer(api, src, dst, player, "10", ts.phone())  # exactly 1000
    assert fits.status == 201, fits
    assert await ts.balance(api, src, player) == "78"
    refused = await ts.initiate_send(api, src, player, "10", ts.phone(), ts.phone())
    assert_envelope(refused, 429, "SMS_RATE_LIMITED")
    assert refused.body["limit"] == "tenant"
    assert 3000 <= retry_after(refused) <= 3600, refused.headers
    assert await ts.balance(api, src, player) == "78"
    assert sorted(await listed(api, src)) == sorted([tid, fits.body["transfer_id"]])
    # Another tenant's texts are its own.
    await ts.fund(api, dst, player, "11")
    assert (await ts.initiate_transfer(api, dst, src, player, "10", ts.phone())).status == 201
    await ts.check_ledger(api)


# -- phone numbers ------------------------------------------------------------------------------

BAD_PHONES = ("+1 555", "12345", "+999123456789", "phone", "+1415555012a", "+1" + "4" * 38)


async def test_unknown_and_malformed_numbers_are_refused(api: Api) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "50")
    for bad in BAD_PHONES:
        for resp, param in (
            (await ts.initiate_transfer(api, src, dst, player, "10", bad), "sender_phone"),
            (await ts.initiate_send(api, src, player, "10", bad, ts.phone()), "sender_phone"),
            (await ts.initiate_send(api, src, player, "10", ts.phone(), bad), "recipient_phone"),
        ):
            assert_envelope(resp, 400, "INVALID_PHONE_NUMBER")
            assert resp.body["param"] == param, (bad, resp)
    assert await ts.balance(api, src, player) == "50"
    assert await listed(api, src) == []
    await ts.check_ledger(api)


@pytest.mark.parametrize("foreign", ["+7 495 123-45-67", "+234 803 123 4567"])
async def test_a_country_not_allowed_is_refused(api: Api, foreign: str) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "50")
    for resp, param in (
        (await ts.initiate_transfer(api, src, dst, player, "10", foreign), "sender_phone"),
        (await ts.initiate_send(api, src, player, "10", foreign, ts.phone()), "sender_phone"),
        (await ts.initiate_send(api, src, player, "10", ts.phone(), foreign), "recipient_phone"),
    ):
        assert_envelope(resp, 400, "PHONE_COUNTRY_NOT_ALLOWED")
        assert resp.body["param"] == param, resp
    assert await ts.balance(api, src, player) == "50"
    assert await listed(api, src) == []
    await ts.check_ledger(api)


def typed(e164: str, style: int) -> str:
    """A +1 number as a person types it."""
    area, exchange, line = e164[2:5], e164[5:8], e164[8:]
    return [f"+1 ({area}) {exchange}-{line}", f"+1.{area}.{exchange}.{line}", f"+1 {area} {exchange} {line}"][style]


@pytest.mark.parametrize("style", [0, 1, 2])
async def test_numbers_as_typed_are_normalised(api: Api, style: int) -> None:
    (src,) = await ts.tenants(api, 1)
    player, sender_phone, recipient_phone = ts.email(), ts.phone(), ts.phone()
    await ts.fund(api, src, player, "22")
    k = ts.key()
    resp = await ts.initiate_send(
        api, src, player, "20", typed(sender_phone, style), typed(recipient_phone, (style + 1) % 3), idempotency_key=k
    )
    assert resp.status == 201, resp
    assert resp.body["sender_phone"] == f"{sender_phone[:5]}•••{sender_phone[-4:]}"
    assert resp.body["recipient_phone"] == f"{recipient_phone[:5]}•••{recipient_phone[-4:]}"
    # The same numbers in E.164 are the same request: the key replays it.
    again = await ts.initiate_send(api, src, player, "20", sender_phone, recipient_phone, idempotency_key=k)
    assert again.status == 200 and again.body["duplicate"] is True, again
    assert again.body["transfer_id"] == resp.body["transfer_id"]
    ok = await ts.verify(api, src, resp.body["transfer_id"], await ts.pin_of(api, sender_phone))
    assert ok.status == 200, ok
    await ts.code_of(api, recipient_phone)  # the code reached the recipient's E.164 number
    assert await ts.balance(api, src, player) == "0"  # held once
    await ts.check_ledger(api)


# -- what is stored -------------------------------------------------------------------------------


def appears(value: object, secret: str) -> bool:
    forms = {secret, secret.replace("-", "")}
    text = value.hex() + repr(value) if isinstance(value, bytes) else str(value)
    raw = value if isinstance(value, bytes) else b""
    return any(f in text or f.encode() in raw for f in forms)


async def sms_rows(stack: Stack, transfer_id: str) -> list[dict[str, Any]]:
    settings = Settings.from_env(stack.env)
    conn = await asyncpg.connect(stack.env["INVO_DATABASE_URL"], timeout=10.0)
    try:
        rows = await conn.fetch(
            f'SELECT * FROM "{settings.schema("transfers")}".sms_messages WHERE transfer_id = $1', transfer_id
        )
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def test_only_hmacs_of_the_codes_are_stored(api: Api, stack: Stack) -> None:
    src, dst = await ts.tenants(api)
    player = ts.email()
    await ts.fund(api, src, player, "110")
    tid, _, pin = await started(api, src, dst, player)
    row = await ts.transfer_row(stack, tid)
    assert row is not None
    assert isinstance(row["pin_hash"], bytes) and len(row["pin_hash"]) == 32
    assert row["claim_hash"] is None
    assert not [c for c, v in row.items() if c != "pin_hash" and appears(v, pin)]

    ok = await ts.verify(api, src, tid, pin)
    assert ok.status == 200, ok
    code = ok.body["claim_code"]
    row = await ts.transfer_row(stack, tid)
    assert row is not None
    assert row["pin_hash"] is None  # a used PIN is forgotten
    assert isinstance(row["claim_hash"], bytes) and len(row["claim_hash"]) == 32
    assert not [c for c, v in row.items() if appears(v, code)]

    async def all_sent() -> list[dict[str, Any]]:
        rows = await sms_rows(stack, tid)
        return rows if rows and all(r["status"] == "sent" for r in rows) else []

    rows = await eventually(all_sent, timeout_s=15)
    assert sorted(r["purpose"] for r in rows) == ["claim", "pin"]
    assert all(r["body_sealed"] is None and r["body_kid"] is None for r in rows)
    await ts.check_ledger(api)
