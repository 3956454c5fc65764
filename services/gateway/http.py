"""HTTP helpers: strict JSON bodies and the error envelope. Fields are declared and validated by
`declare.py`."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from aiohttp import web

from services.common import errors
from services.common.logs import request_id_var


def json_response(body: Any, *, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda v: json.dumps(v, separators=(",", ":")))


def error_response(exc: errors.InvoError) -> web.Response:
    resp = json_response(exc.envelope(request_id_var.get()), status=exc.http_status)
    if exc.retry_after_s is not None:
        resp.headers["Retry-After"] = str(exc.retry_after_s)
    return resp


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _number(text: str) -> int | Decimal:
    """A JSON number with a fraction or exponent: exact, never a float. An integral one (2.0, 1e3)
    is the integer JSON Schema says it is; one past 20 digits stays a Decimal, so that a tiny
    body can never ask for a million-digit int."""
    value = Decimal(text)
    if value.is_finite() and value == value.to_integral_value() and value.adjusted() < 20:
        return int(value)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object that names a key twice is refused: which value would count is anyone's guess."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object. Numbers with a fraction arrive as Decimal, never float."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.PayloadTooLarge("The request body is too large.") from exc
    if not raw.strip():
        raise errors.InvalidRequest("The request body must be a JSON object.", error_code="INVALID_JSON")
    try:
        body = json.loads(raw, parse_float=_number, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise errors.InvalidRequest("The request body is not valid JSON.", error_code="INVALID_JSON") from exc
    if not isinstance(body, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.", error_code="INVALID_JSON")
    if _has_nul(body):
        raise errors.InvalidRequest("Strings must not contain NUL characters.", error_code="INVALID_JSON")
    return body


def _has_nul(value: Any) -> bool:
    """PostgreSQL text cannot hold U+0000: refuse it at the edge instead of failing deep inside."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


async def read_optional_json(request: web.Request) -> dict[str, Any]:
    if request.content_length in (None, 0) and not request.can_read_body:
        return {}
    return await read_json(request)


def invalid(field: str, message: str) -> errors.InvalidRequest:
    """A field the declaration could not judge alone (an opaque cursor, say) is refused so."""
    return errors.InvalidRequest(message, error_code="INVALID_PARAMETER", extra={"param": field})
