"""HTTP helpers: strict JSON bodies and the error envelope. Fields are declared and validated by
`declare.py`."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from aiohttp import web

from services.common import errors, limits
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


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON: exact numbers, no NaN, no key twice, at most `limits.JSON_DEPTH_MAX` levels,
    every string Unicode text without NUL. Raises `ValueError` naming the problem.

    Bytes must be UTF-8 (RFC 8259): `json.loads` would also guess UTF-16 and UTF-32 from the first
    bytes, and such a body, ASCII-only in its bytes, would skip the check of its text below."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw  # UnicodeDecodeError is a ValueError
    try:
        value = json.loads(text, parse_float=_number, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except RecursionError as exc:  # deeper than the parser goes: far past our own limit
        raise ValueError("nested too deeply") from exc
    # In ASCII text, NUL and surrogates can only arrive as \u escapes (UTF-8-encoded surrogates
    # fail the strict decode above), and a body with few brackets cannot be deep: the common body
    # skips the walk.
    if not (
        isinstance(raw, bytes)
        and raw.isascii()
        and b"\\u" not in raw
        and raw.count(b"[") + raw.count(b"{") <= limits.JSON_DEPTH_MAX
    ):
        _check_tree(value)
    return value


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object. Numbers with a fraction arrive as Decimal, never float."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.PayloadTooLarge("The request body is too large.") from exc
    if not raw.strip():
        raise errors.InvalidRequest("The request body must be a JSON object.", error_code="INVALID_JSON")
    try:
        body = parse_json(raw)
    except _TextProblem as exc:
        raise errors.InvalidRequest(str(exc), error_code="INVALID_JSON") from exc
    except ValueError as exc:
        raise errors.InvalidRequest("The request body is not valid JSON.", error_code="INVALID_JSON") from exc
    if not isinstance(body, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.", error_code="INVALID_JSON")
    return body


class _TextProblem(ValueError):
    """Valid JSON syntax whose content we refuse; the message says what, for the envelope."""


# PostgreSQL text cannot hold U+0000, and a lone surrogate (an escape such as "\ud800" with no
# pair) is not Unicode: no service could encode it. Both are refused at the edge, never a 500 deep
# inside.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def _check_tree(value: Any) -> None:
    """Walk the parsed value without recursion (a deep body must not overflow the stack here
    either): depth, and every string and key."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node)
        elif isinstance(node, dict | list):
            if depth > limits.JSON_DEPTH_MAX:
                raise _TextProblem(f"The request body is nested deeper than {limits.JSON_DEPTH_MAX} levels.")
            if isinstance(node, dict):
                for k in node:
                    _check_text(k)
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))


def _check_text(text: str) -> None:
    bad = _BAD_TEXT.search(text)
    if bad is None:
        return
    if bad.group() == "\x00":
        raise _TextProblem("Strings must not contain NUL characters.")
    raise _TextProblem("Strings must be valid Unicode: a lone surrogate (such as \\ud800) is not.")


async def read_optional_json(request: web.Request) -> dict[str, Any]:
    if request.content_length in (None, 0) and not request.can_read_body:
        return {}
    return await read_json(request)


def invalid(field: str, message: str) -> errors.InvalidRequest:
    """A field the declaration could not judge alone (an opaque cursor, say) is refused so."""
    return errors.InvalidRequest(message, error_code="INVALID_PARAMETER", extra={"param": field})
