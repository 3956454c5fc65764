"""Hostile input across every route of the OpenAPI document (issue 11, findings 6, 7 and 9).

The cases are generated from the route table: the document the gateway serves is built from the
route declarations, and every operation in it gets each class of hostile input that applies to it
(a header that is not UTF-8, a credential sent twice, a lone surrogate in any body field or query
parameter, deep nesting, a key named twice, an amount written with non-ASCII digits or spaces, a
header or URL past the parser's 8 KB, control characters in a header). Each must answer a 4xx with
the error envelope, never a 5xx, and change nothing: the world's balances, tenants, keys, ledger
entries, deliveries and operators read the same before and after. A route declared tomorrow is in
the document, so it is in these tests.
"""

from __future__ import annotations

import base64
import itertools
import json
import unicodedata
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from devstack.stack import Stack
from services.gateway import app as _app  # noqa: F401  (registers every route's declaration)
from tests import hostile_support as hs
from tests.helpers import Api, assert_envelope
from tests.hostile_world import DOC, SDK_HEADER, World, make_world, snapshot
from tests.payments_support import send_processor_event, stripe_signature

OPS = hs.operations(DOC)
SURROGATES: tuple[Any, ...] = ("\ud800", "\udfff", "a\ud83dz", ["x", {"k": "\udc00"}])
# Digits of other scripts, full-width digits, superscripts, spaces inside or around: Python's int()
# and Decimal() read several of these as numbers; a money API must read none of them.
SPOILED_NUMBERS = ("1\u0660", "\u0661\u0660", "1 0", " 10", "10 ", "\uff11\uff10", "1\u00a00", "10\u200b", "\u00b2")
SPOILED_QUERY_INTS = ("\uff11\uff10", "1\u0660", " 10", "10 ", "\u00b2", "+10")
BAD_QUERY_BYTES = ("%ED%A0%80", "%FF", "%C3", "a%ED%B0%80b")
PAD = 9000  # past aiohttp's 8190-byte line limit

_sources = itertools.count()


def next_source() -> str:
    """A loopback address of this test's own (127.77.x.y): failed authentications are limited
    per address, and one test's must never throttle the next."""
    n = next(_sources)
    return f"127.77.{n // 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    import asyncio

    yield asyncio.run(make_world(stack))


# -- the classes ----------------------------------------------------------------------------------

Control = Callable[[], Awaitable[None]] | None


async def bad_utf8_auth(op: hs.Operation, w: World, source: str) -> Control:
    codes: tuple[str, ...]
    if op.security == "GameSecretKey":
        name, codes = SDK_HEADER, ("INVALID_API_KEY",)
        values = [b"ivsdk_\xff\xfe" + b"A" * 41, b"ivsdk_" + b"\xe9" * 43, w.sdk_key.encode() + b"\xc3"]
    elif op.security == "CheckoutSession":
        name, codes = "Authorization", ("INVALID_SESSION",)
        values = [b"Bearer \xff\xfe", b"Bearer eyJ\xff" + b"A" * 40, f"Bearer {w.checkout_token}".encode() + b"\xe9"]
    else:
        name, codes = "Authorization", ("INVALID_ADMIN_TOKEN", "MISSING_ADMIN_TOKEN")
        values = [b"Bearer \xff\xfe", b"Bearer invo_op_\xff" + b"A" * 40, f"Bearer {w.admin_token}".encode() + b"\xe9"]
    for value in values:
        hs.check_refusal(await w.send(op, source, headers=[(name, value)]), [401], codes)
    return None


async def duplicate_auth(op: hs.Operation, w: World, source: str) -> Control:
    if op.security == "GameSecretKey":
        name, good, other = SDK_HEADER, w.sdk_key, "ivsdk_" + "B" * 43
    elif op.security == "CheckoutSession":
        name, good, other = "Authorization", f"Bearer {w.checkout_token}", "Bearer eyJother"
    else:
        name, good, other = "Authorization", f"Bearer {w.admin_token}", "Bearer invo_op_other"
    for pair in ((good, other), (other, good), (good, good)):
        resp = await w.send(op, source, headers=[(name, pair[0]), (name, pair[1])])
        hs.check_refusal(resp, [400], ["INVALID_REQUEST"])
    return None


async def surrogate_body(op: hs.Operation, w: World, source: str) -> Control:
    valid = w.body(op)
    assert op.body is not None
    for field in [*op.body.get("properties", {}), None]:
        for bad in SURROGATES:
            body = hs.with_value(valid, field, bad) if field else {**valid, "\ud800": 1}
            resp = await w.send(op, source, body=json.dumps(body).encode())  # ensure_ascii: \ud800
            hs.check_refusal(resp, [400], ["INVALID_JSON"])
        # Not escaped but encoded: json reads bytes with "surrogatepass", so these get through too.
        if field:
            text = json.dumps(hs.with_value(valid, field, "__RAW__")).encode()
            resp = await w.send(op, source, body=text.replace(b'"__RAW__"', b'"a\xed\xa0\x80"'))
            hs.check_refusal(resp, [400], ["INVALID_JSON"])
    return None


async def not_utf8_body(op: hs.Operation, w: World, source: str) -> Control:
    """JSON is UTF-8: a body in UTF-16 or UTF-32 (which Python's json would guess and read) is
    refused, with a lone surrogate inside or not; its ASCII-looking bytes must not skip the text
    checks (they once did: a 500 in the service that got the surrogate)."""
    valid = w.body(op)
    assert op.body is not None
    for field in [*op.body.get("properties", {}), None]:
        body = hs.with_value(valid, field, "a\ud800b") if field else valid
        text = json.dumps(body, ensure_ascii=False)
        for encoding in ("utf-16-le", "utf-16", "utf-32"):
            resp = await w.send(op, source, body=text.encode(encoding, errors="surrogatepass"))
            hs.check_refusal(resp, [400], ["INVALID_JSON"])
    return None


async def surrogate_query(op: hs.Operation, w: World, source: str) -> Control:
    for name in [*op.query, "x"]:
        for bad in BAD_QUERY_BYTES:
            resp = await w.send(op, source, target=hs.target(op, w.path_params, f"{name}={bad}"))
            hs.check_refusal(resp, [400], ["INVALID_REQUEST"])
    for name in op.path_params:
        resp = await w.send(op, source, target=hs.target(op, {**w.path_params, name: "%ED%A0%80"}))
        hs.check_refusal(resp, [400], ["INVALID_REQUEST"])
    return None


async def deep_nesting(op: hs.Operation, w: World, source: str) -> Control:
    assert op.body is not None
    field = next(iter(op.body.get("properties", {})), "a")
    text = json.dumps(hs.with_value(w.body(op), field, "__DEEP__"))
    for depth in (64, 300, 10000):  # 10,000 object levels are 50 KB, within the body limit
        for deep in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
            resp = await w.send(op, source, body=text.replace('"__DEEP__"', deep).encode())
            hs.check_refusal(resp, [400], ["INVALID_JSON"])
    return None


async def duplicate_keys(op: hs.Operation, w: World, source: str) -> Control:
    assert op.body is not None
    valid = w.body(op)
    for field in op.body.get("properties", {}) or ["a"]:
        value = json.dumps(valid.get(field, 1))
        for repeat in (value, json.dumps("other")):
            text = json.dumps({**valid, field: json.loads(value)})[:-1] + f', "{field}": {repeat}}}'
            hs.check_refusal(await w.send(op, source, body=text.encode()), [400], ["INVALID_JSON"])
    return None


async def spoiled_numbers(op: hs.Operation, w: World, source: str) -> Control:
    fields = hs.numeric_fields(op.body, DOC) if op.body is not None else []
    valid = w.body(op) if op.body is not None else {}
    for field in fields:
        for bad in SPOILED_NUMBERS:
            resp = await w.send(op, source, body=json.dumps(hs.with_value(valid, field, bad)).encode())
            hs.check_refusal(resp, [400], ["INVALID_PARAMETER", "INVALID_AMOUNT"], param=field)
    for name in hs.integer_query_params(op, DOC):
        for bad in SPOILED_QUERY_INTS:
            query = f"{name}={urllib.parse.quote(bad)}"
            resp = await w.send(op, source, target=hs.target(op, w.path_params, query))
            hs.check_refusal(resp, [400], ["INVALID_PARAMETER"], param=name)
    if not fields:
        return None

    async def control() -> None:
        # The same body with plain digits goes through: the refusals above were the digits'.
        resp = await w.send(op, source, body=json.dumps(valid).encode())
        assert resp.status < 300, (op.id, valid, resp)

    return control


# JSON numbers no field needs: written out in full, the first is a billion digits. Each must be
# refused at once (the raw client's timeout is the bound), never formatted or converted.
HUGE_NUMBERS = ("1e999999999", "-1e999999999", "1e-999999999", '{"k": 1e999999999}', "[1E+999999999]")


async def huge_numbers(op: hs.Operation, w: World, source: str) -> Control:
    assert op.body is not None
    valid = w.body(op)
    for field in op.body.get("properties", {}) or ["a"]:
        text = json.dumps(hs.with_value(valid, field, "__NUMBER__"))
        for number in HUGE_NUMBERS:
            resp = await w.send(op, source, body=text.replace('"__NUMBER__"', number).encode())
            hs.check_refusal(resp, [400])
    return None


def _no_echo(resp: hs.RawResponse, marker: str) -> None:
    assert marker.encode() not in resp.raw, resp.raw[:300]


async def long_header(op: hs.Operation, w: World, source: str) -> Control:
    marker = f"hostile{uuid.uuid4().hex}"
    for extra in (("X-Hostile", marker + "A" * PAD), (f"X-{marker}" + "B" * PAD, "v")):
        resp = await w.send(op, source, headers=[*w.auth(op), extra])
        hs.check_refusal(resp, [400], ["INVALID_REQUEST"])
        _no_echo(resp, marker)
    return None


async def long_url(op: hs.Operation, w: World, source: str) -> Control:
    marker = f"hostile{uuid.uuid4().hex}"
    for target in (hs.target(op, w.path_params, f"pad={marker}{'A' * PAD}"), f"/{marker}{'A' * PAD}"):
        resp = await w.send(op, source, target=target)
        hs.check_refusal(resp, [400], ["INVALID_REQUEST"])
        _no_echo(resp, marker)
    return None


async def control_chars_in_header(op: hs.Operation, w: World, source: str) -> Control:
    marker = f"hostile{uuid.uuid4().hex}"
    name = "Authorization" if op.security in ("OperatorBearer", "CheckoutSession") else SDK_HEADER
    for extra in (("X-Hostile", b"a\x00" + marker.encode()), ("X-Hostile", b"a\r" + marker.encode())):
        resp = await w.send(op, source, headers=[*w.auth(op), extra])
        hs.check_refusal(resp, [400], ["INVALID_REQUEST"])
        _no_echo(resp, marker)
    resp = await w.send(op, source, headers=[(name, b"ivsdk_\x00" + marker.encode())])
    hs.check_refusal(resp, [400], ["INVALID_REQUEST"])
    _no_echo(resp, marker)
    return None


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def odd_cursors(op: hs.Operation, w: World, source: str) -> Control:
    cursors = [_b64("e:" + "9" * 30), _b64(f"e:{2**63}"), _b64("e:-1"), _b64("e:\u0661\u0662"), "9" * 30, "A" * 300]
    for cursor in cursors:
        resp = await w.send(op, source, target=hs.target(op, w.path_params, f"cursor={cursor}"))
        assert resp.status < 500, (op.id, cursor, resp)
        if resp.status >= 400:
            hs.check_refusal(resp, [400])
    return None


Applies = Callable[[hs.Operation], bool]
KINDS: dict[str, tuple[Applies, Callable[[hs.Operation, World, str], Awaitable[Control]]]] = {
    "bad-utf8-auth": (lambda op: op.security is not None, bad_utf8_auth),
    "duplicate-auth": (lambda op: op.security is not None, duplicate_auth),
    "surrogate-body": (lambda op: op.body is not None, surrogate_body),
    "not-utf8-body": (lambda op: op.body is not None, not_utf8_body),
    "surrogate-query": (lambda op: True, surrogate_query),
    "deep-nesting": (lambda op: op.body is not None, deep_nesting),
    "duplicate-keys": (lambda op: op.body is not None, duplicate_keys),
    "huge-numbers": (lambda op: op.body is not None, huge_numbers),
    "spoiled-numbers": (
        lambda op: bool((op.body is not None and hs.numeric_fields(op.body, DOC)) or hs.integer_query_params(op, DOC)),
        spoiled_numbers,
    ),
    "long-header": (lambda op: True, long_header),
    "long-url": (lambda op: True, long_url),
    "control-chars-in-header": (lambda op: True, control_chars_in_header),
    "odd-cursors": (lambda op: "cursor" in op.query, odd_cursors),
}
CASES = [
    pytest.param(op, kind, id=f"{op.id} {kind}") for op in OPS for kind, (applies, _) in KINDS.items() if applies(op)
]


@pytest.mark.parametrize(("op", "kind"), CASES)
async def test_hostile_input_is_refused_and_changes_nothing(
    op: hs.Operation, kind: str, world: World, api: Api
) -> None:
    before = await snapshot(api, world)
    control = await KINDS[kind][1](op, world, next_source())
    assert await snapshot(api, world) == before
    if control is not None:
        await control()


def test_every_class_reaches_the_routes_it_should() -> None:
    """The generation did not quietly shrink: every route gets the header classes, every body and
    every amount its own."""
    kinds = {(op.id, kind) for op in OPS for kind, (applies, _) in KINDS.items() if applies(op)}
    assert len(OPS) > 30
    for op in OPS:
        assert {(op.id, "long-header"), (op.id, "surrogate-query")} <= kinds
    for route in ("POST /api/item-purchases/purchase-item", "POST /admin/players/debit", "POST /admin/tenants"):
        assert (route, "spoiled-numbers") in kinds
    assert ("GET /api/ledger/entries", "odd-cursors") in kinds


# -- focused ------------------------------------------------------------------------------------


async def test_one_address_in_two_unicode_forms_is_one_wallet(api: Api) -> None:
    """NFC, then lower case (services/common/players.py): "José" typed with a composed é, with e
    and a combining accent, or in capitals, is one player."""
    t = await api.create_tenant()
    composed = f"jos\u00e9.{uuid.uuid4().hex[:8]}@example.com"
    decomposed = unicodedata.normalize("NFD", composed)
    shouted = unicodedata.normalize("NFD", composed.upper())
    assert len({composed, decomposed, shouted}) == 3
    credited = await api.credit(t["tenant_id"], decomposed, "5")
    assert credited.status == 200 and credited.body["player_email"] == composed, credited
    assert (await api.credit(t["tenant_id"], shouted, "7")).body["new_balance"] == "12"
    for form in (composed, decomposed, shouted):
        got = await api.get(f"/api/players/balance?player_email={urllib.parse.quote(form)}", key=t["sdk_key"])
        assert got.body["balance"] == "12" and got.body["player_email"] == composed, got
    bought = await api.post(
        "/api/item-purchases/purchase-item",
        key=t["sdk_key"],
        json={"player_email": shouted, "item_id": "i", "item_name": "I", "price": "2", "idempotency_key": "nfc-1"},
    )
    assert bought.status == 200 and bought.body["new_balance"] == "10", bought
    # The batch read answers each player once: two forms of one address are one line.
    many = await api.post("/api/players/balances", key=t["sdk_key"], json={"player_emails": [composed, decomposed]})
    assert [(b["player_email"], b["balance"]) for b in many.body["balances"]] == [(composed, "10")], many
    entries = (await api.get("/api/ledger/entries", key=t["sdk_key"])).body["data"]
    assert {e["player_email"] for e in entries if e["account"] == "player"} == {composed}


async def test_a_signed_processor_event_is_read_one_way(api: Api, stack: Stack) -> None:
    """The processor's body is signed, yet still parsed strictly: a key twice, a lone surrogate or
    deep nesting is refused (400), never guessed at nor a 500."""
    secret = stack.env["INVO_PROCESSOR_WEBHOOK_SECRET"]
    evt = f"evt_hostile_{uuid.uuid4().hex[:12]}"
    payloads = [
        f'{{"id": "{evt}", "object": "event", "type": "charge.updated", "type": "payment_intent.succeeded"}}',
        f'{{"id": "{evt}\\ud800", "object": "event", "type": "charge.updated"}}',
        f'{{"id": "{evt}", "object": "event", "type": "charge.updated", "data": {"[" * 300}{"]" * 300}}}',
    ]
    for payload in payloads:
        resp = await send_processor_event(api, payload, stripe_signature(payload, secret))
        assert_envelope(resp, 400, "INVALID_EVENT")
    # Its signature header read one way too: once, and text.
    good = stripe_signature(payloads[0], secret).encode()
    for headers in ([("Stripe-Signature", good + b"\xff")], [("Stripe-Signature", good), ("Stripe-Signature", good)]):
        raw = await hs.send(stack.gateway_url, hs.build("POST", "/webhooks/processor", headers, payloads[0].encode()))
        hs.check_refusal(raw, [400], ["INVALID_SIGNATURE", "INVALID_REQUEST"])


async def test_a_cursor_outside_64_bits_or_in_other_digits_is_refused(api: Api) -> None:
    t = await api.create_tenant()
    for text in ("e:" + "9" * 30, f"e:{2**63}", "e:\u0661\u0662", "e:+1", "e: 1"):
        resp = await api.get(f"/api/ledger/entries?cursor={_b64(text)}", key=t["sdk_key"])
        assert_envelope(resp, 400, "INVALID_PARAMETER")
        assert resp.body["param"] == "cursor"
    last = await api.get(f"/api/ledger/entries?cursor={_b64(f'e:{2**63 - 1}')}", key=t["sdk_key"])
    assert last.status == 200 and last.body["data"] == [], last


async def test_a_query_parameter_sent_twice_is_refused(api: Api) -> None:
    """Which of two values counts is anyone's guess: a money API reads a request one way."""
    t = await api.create_tenant()
    resp = await api.get("/api/players/balance?player_email=a@example.com&player_email=b@example.com", key=t["sdk_key"])
    assert_envelope(resp, 400, "INVALID_PARAMETER")
    assert resp.body["param"] == "player_email"
