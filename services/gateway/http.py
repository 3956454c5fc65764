"""HTTP helpers: strict JSON bodies, the error envelope, field parsing with clear 400s."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from aiohttp import web

from services.common import errors, money
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


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object. Numbers with a fraction arrive as Decimal, never float."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.PayloadTooLarge("The request body is too large.") from exc
    if not raw.strip():
        raise errors.InvalidRequest("The request body must be a JSON object.", error_code="INVALID_JSON")
    try:
        body = json.loads(raw, parse_float=Decimal, parse_constant=_no_constants)
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


def reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.InvalidRequest(
            f"Unknown field: {unknown[0][:64]}.", error_code="UNKNOWN_FIELD", extra={"param": unknown[0][:64]}
        )


def invalid(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, error_code="INVALID_PARAMETER", extra={"param": field})


def get_str(body: dict[str, Any], field: str, *, max_len: int, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise errors.InvalidRequest(f"{field} is required.", error_code="MISSING_PARAMETER", extra={"param": field})
        return None
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string.")
    if len(value) > max_len:
        raise invalid(field, f"{field} must be at most {max_len} characters.")
    return value


def get_bool(body: dict[str, Any], field: str) -> bool | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise invalid(field, f"{field} must be true or false.")
    return value


def get_int(body: dict[str, Any], field: str, *, lo: int, hi: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid(field, f"{field} must be a whole number from {lo} to {hi}.")
    return value


def get_scaled(body: dict[str, Any], field: str, *, places: int, hi: int | None = None) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    try:
        scaled = money.parse_scaled(value, places=places, field=field)
    except money.AmountError as exc:
        raise invalid(field, str(exc) + ".") from exc
    if hi is not None and scaled > hi:
        raise invalid(field, f"{field} must be at most {money.format_scaled(hi, places=places, trim=True)}.")
    return scaled
