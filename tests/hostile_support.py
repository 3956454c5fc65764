"""Support for tests/test_hostile_input.py: a raw HTTP/1.1 client (it sends the bytes aiohttp's
client refuses to), the operations of the OpenAPI document as data, and bodies built from their
schemas, so that the hostile-input tests are generated from the route table and a new route is
covered the day it is declared."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from multidict import CIMultiDict

from tests.helpers import ENVELOPE_KEYS, Response

READ_BYTES_MAX = 1 << 20  # an error answer is tiny; a page of entries is well under this
RAW_TIMEOUT_S = 10.0
# A second of safety: webhook endpoints point where nothing listens (as in the fuzz tests).
SAFE_WEBHOOK_URL = "https://127.0.0.1:9/hostile"

Header = tuple[str | bytes, str | bytes]


class RawResponse(Response):
    def __init__(self, status: int, body: Any, headers: CIMultiDict[str], raw: bytes) -> None:
        super().__init__(status, body, headers)
        self.raw = raw


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def build(method: str, target: str | bytes, headers: Sequence[Header] = (), body: bytes | None = None) -> bytes:
    """One HTTP/1.1 request, byte for byte as given (no encoding, no validation)."""
    lines = [method.encode() + b" " + _bytes(target) + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [_bytes(k) + b": " + _bytes(v) for k, v in headers]
    if body is not None:
        lines += [b"Content-Type: application/json", b"Content-Length: " + str(len(body)).encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _dechunk(data: bytes) -> bytes:
    out, rest = b"", data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def parse(data: bytes) -> RawResponse:
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    elif "Content-Length" in headers:
        payload = payload[: int(headers["Content-Length"])]
    body: Any = payload.decode("utf-8", "replace")
    if headers.get("Content-Type", "").startswith("application/json"):
        try:
            body = json.loads(payload)
        except ValueError:
            pass
    return RawResponse(int(status_line.split(" ")[1]), body, headers, payload)


async def send(base_url: str, request: bytes, *, source: str = "127.0.0.1") -> RawResponse:
    """Send `request` from the loopback address `source` (each test its own, so that one test's
    failed authentications never throttle another's) and read the answer to the end."""
    url = urllib.parse.urlsplit(base_url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(url.hostname, url.port, local_addr=(source, 0)), RAW_TIMEOUT_S
    )
    try:
        writer.write(request)
        await writer.drain()
        data = b""
        while len(data) < READ_BYTES_MAX:
            chunk = await asyncio.wait_for(reader.read(65536), RAW_TIMEOUT_S)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass  # the gateway closes its side after an error answer; that is fine
    return parse(data)


def check_refusal(resp: Response, statuses: Sequence[int], codes: Sequence[str] = (), param: str | None = None) -> None:
    """A refusal as the contract shapes it: one of `statuses`, the JSON envelope with its request
    id, and (when given) one of `codes` and the field in `param`."""
    assert resp.status in statuses, resp
    assert isinstance(resp.body, dict), resp
    assert ENVELOPE_KEYS <= set(resp.body), resp
    assert resp.body["status"] == "error", resp
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    assert resp.body["request_id"] == resp.headers["X-Request-Id"], resp
    if codes:
        assert resp.body["error_code"] in codes, resp
    if param is not None:
        assert resp.body.get("param") == param, resp


# -- the document as data ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    security: str | None  # "GameSecretKey", "OperatorBearer" or None
    query: Mapping[str, Any]  # name -> schema
    path_params: tuple[str, ...]
    body: Mapping[str, Any] | None  # the resolved body schema

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def resolve(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def operations(doc: Mapping[str, Any]) -> list[Operation]:
    out = []
    for path, ops in sorted(doc["paths"].items()):
        for method, op in sorted(ops.items()):
            params = op.get("parameters", [])
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            out.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    security=next(iter(op["security"][0]), None) if op["security"] else None,
                    query={p["name"]: p["schema"] for p in params if p["in"] == "query"},
                    path_params=tuple(p["name"] for p in params if p["in"] == "path"),
                    body=resolve(body, doc) if body is not None else None,
                )
            )
    return out


def _branches(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A schema's alternatives (anyOf), each resolved; `null` left out."""
    schema = resolve(schema, doc)
    options = schema.get("anyOf") or [schema]
    return [resolve(s, doc) for s in options if resolve(s, doc).get("type") != "null"]


def is_numeric_text(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> bool:
    """A string field whose documented pattern takes ASCII digits and no letters: an amount or
    a percentage, the fields where "1" followed by two Arabic-Indic zeros must never read as 100."""
    for s in _branches(schema, doc):
        pattern = s.get("pattern")
        if s.get("type") == "string" and pattern:
            if any(re.search(pattern, v) for v in ("1", "10", "0.5")) and not re.search(pattern, "x"):
                return True
    return False


def numeric_fields(schema: Mapping[str, Any], doc: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every numeric-text field of a body, nested objects included."""
    out = []
    for name, prop in schema.get("properties", {}).items():
        if is_numeric_text(prop, doc):
            out.append(prefix + name)
        for branch in _branches(prop, doc):
            if branch.get("type") == "object" and "properties" in branch:
                out += numeric_fields(branch, doc, f"{prefix}{name}.")
    return out


def integer_query_params(op: Operation, doc: Mapping[str, Any]) -> list[str]:
    return [name for name, s in op.query.items() if any(b.get("type") == "integer" for b in _branches(s, doc))]


# -- valid bodies ---------------------------------------------------------------------------------


def phone() -> str:
    """A valid US number of its own (texts are limited per number and hour)."""
    return f"+1415{random.randint(200, 999)}{random.randint(0, 9999):04d}"


def fills(email: str, tenant_id: str, path_params: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Values for fields whose schema alone cannot say which value is valid here (the world's
    player, a tenant that exists, a fresh key). A required field with neither a fill nor an example
    fails the generation: a new field needs a line here, never a silent skip."""
    unique = uuid.uuid4().hex
    params = path_params or {}
    return {
        # Transfers: to the world's other tenant, a small amount, numbers of their own; the PIN and
        # the claim code are well formed (a body refused before it is read never reaches them).
        "destination_tenant_id": params.get("tenant_id", tenant_id),
        "transfer_id": params.get("transfer_id", "trf_" + "0" * 26),
        "amount": "1",
        "sender_phone": phone(),
        "recipient_phone": phone(),
        "pin": "000000",
        "claim_code": "0000-0000-0000-0000",
        # Payouts: a small amount of the world's revenue, a valid ABA routing number, the simulator's
        # account that completes.
        "usd_amount": "1.00",
        "contact_email": "hostile@example.com",
        "account_holder_name": "Hostile Inc.",
        "routing_number": "021000021",
        "account_number": "123456789",
        "account_type": "checking",
        "player_email": email,
        "player_emails": [email],
        "tenant_id": tenant_id,
        "idempotency_key": f"hostile-{unique}",
        "purchase_reference": f"hostile-{unique}",
        "item_id": "sword",
        # Subscriptions: a plan the world's player can pay (its first period is charged at once).
        "plan_id": "hostile-plan",
        "plan_name": "Hostile Plan",
        "price": "1",
        "interval": "month",
        "item_name": "Sword",
        "reason": "hostile-input test",
        "name": "Hostile",
        "currency_name": "Hostile Coins",
        "webhook_url": SAFE_WEBHOOK_URL,
        "email": f"hostile-{unique}@example.com",
        "role": "viewer",
        "since": "2026-01-01T00:00:00Z",
        "payment_intent_id": "pi_hostile",
        "order_id": "ord_hostile",
    }


def _example(name: str, schema: Mapping[str, Any], doc: Mapping[str, Any], filled: Mapping[str, Any]) -> Any:
    if name in filled:
        return filled[name]
    for s in [resolve(schema, doc), *_branches(schema, doc)]:
        for key in ("examples", "enum"):
            if s.get(key):
                return s[key][0]
        if "default" in s:
            return s["default"]
    raise AssertionError(f"no valid value known for field {name!r}: add one to hostile_support.fills")


def valid_body(schema: Mapping[str, Any], doc: Mapping[str, Any], filled: Mapping[str, Any]) -> dict[str, Any]:
    """The required fields, and every numeric one (so that it can be spoiled), with valid values
    (`filled` from `fills`, else the schema's own examples)."""
    required = set(schema.get("required", ()))
    body: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        nested = [b for b in _branches(prop, doc) if b.get("type") == "object" and "properties" in b]
        if nested and numeric_fields(nested[0], doc):
            body[name] = valid_body(nested[0], doc, filled)
        elif name in required or is_numeric_text(prop, doc):
            body[name] = _example(name, prop, doc, filled)
    return body


def with_value(body: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with the field at `dotted` set to `value`."""
    out = json.loads(json.dumps(body))
    node = out
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return dict(out)


def target(op: Operation, path_params: Mapping[str, str], query: str = "") -> str:
    """The operation's path with its path parameters filled in (an unknown one gets a
    well-formed id that matches nothing)."""
    path = op.path
    for name in op.path_params:
        path = path.replace("{" + name + "}", path_params.get(name, "x_hostile"))
    return path + (f"?{query}" if query else "")
