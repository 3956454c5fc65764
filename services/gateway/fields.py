"""The field types requests are declared with: each carries its validation, the error code it
answers with, and the JSON Schema the OpenAPI document shows for it.

A validator that refuses a value raises `refuse(code, message)`; `declare` turns the first refusal
of a request into the documented envelope with `param` set to the field's path. Where a type's
documented schema is narrower than what the server accepts (an email, metadata), the schema is the
part we promise: every value it describes is accepted.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from google.protobuf import timestamp_pb2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from services.common import errors, limits, money
from services.common.players import normalize_email

# PostgreSQL text cannot hold U+0000; the gateway refuses it for the whole body (INVALID_JSON).
NO_NUL = r"^[^\x00]*$"
# Error types whose name carries the envelope's error code.
CODE_PREFIX = "invo:"


@dataclass(frozen=True)
class Codes:
    """Annotated metadata: the error codes of one field, where the API promises its own."""

    missing: str = "MISSING_PARAMETER"
    invalid: str = "INVALID_PARAMETER"


def refuse(code: str, message: str, *, param: str = "") -> PydanticCustomError:
    """A value refused with `code`; `param` names the field where pydantic cannot (a model check)."""
    return PydanticCustomError(CODE_PREFIX + code, message, {"param": param} if param else None)


def _name(info: ValidationInfo) -> str:
    return info.field_name or "value"


def text(max_len: int, *, min_len: int = 0) -> Any:
    """Field metadata of a string of `min_len` to `max_len` characters: `Annotated[str, text(255)]`."""
    return Field(min_length=min_len, max_length=max_len, json_schema_extra={"pattern": NO_NUL})


def non_blank(max_len: int) -> Checked:
    """`Annotated[str, non_blank(255)]`: at most `max_len` characters, not only spaces (kept as sent)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and (not value.strip() or len(value) > max_len):
            raise refuse("INVALID_PARAMETER", f"{_name(info)} must be 1 to {max_len} characters, not only spaces.")
        return value

    return Checked(check, {"type": "string", "maxLength": max_len, "pattern": r"^[^\x00]*[^\x00\s][^\x00]*$"})


@dataclass(frozen=True, eq=False)  # hashed by identity: Annotated metadata must hash
class Checked:
    """Annotated metadata: a validator run before the type's own, and the JSON Schema it documents."""

    check: Callable[[Any, ValidationInfo], Any]
    schema: dict[str, Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, _schema: CoreSchema, _handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.schema)


# -- amounts --------------------------------------------------------------------------------------


def _parse(value: Any, *, field: str, places: int) -> int:
    if value is None:
        raise refuse("MISSING_PARAMETER", f"{field} is required.")
    try:
        return money.parse_scaled(value, places=places, field=field)
    except money.AmountError as exc:
        raise refuse("INVALID_PARAMETER", str(exc) + ".") from exc


def units(minor_max: int) -> Checked:
    """`Annotated[int, units(limits.PRICE_MINOR_MAX)]`: a positive amount of currency units as
    minor units, at most `minor_max`."""

    def check(value: Any, info: ValidationInfo) -> int:
        field = _name(info)
        minor = _parse(value, field=field, places=2)
        if minor <= 0:
            raise refuse("INVALID_PARAMETER", f"{field} must be greater than zero.")
        if minor > minor_max:
            raise refuse("INVALID_PARAMETER", f"{field} must be at most {money.format_units(minor_max)}.")
        return minor

    # Positive, at most two decimals, fewer whole digits than the limit has: always within it.
    whole_digits = len(str(minor_max // 100)) - 1
    schema = {
        "type": "string",
        "pattern": rf"^([1-9][0-9]{{0,{whole_digits - 1}}}(\.[0-9]{{1,2}})?|0\.(0[1-9]|[1-9][0-9]?))$",
        "examples": ["10", "0.35"],
        "description": f"Currency units as a decimal string, greater than zero, at most two decimals and at most"
        f" {money.format_units(minor_max)} (a JSON number is parsed exactly, never as a float).",
    }
    return Checked(check, schema)


def usd(schema: dict[str, Any], *, cents_max: int | None = None) -> Checked:
    """`Annotated[int, usd(SCHEMA)]`: a positive USD amount as cents, at most `cents_max` if given
    (400 INVALID_AMOUNT otherwise); the owner holds it to its own range, which `schema` documents."""

    def check(value: Any, info: ValidationInfo) -> int:
        field = _name(info)
        if value is None:
            raise refuse("MISSING_PARAMETER", f"{field} is required.")
        try:
            cents = money.parse_scaled(value, places=2, field=field)
        except money.AmountError as exc:
            raise refuse("INVALID_AMOUNT", str(exc) + ".") from exc
        if cents <= 0:
            raise refuse("INVALID_AMOUNT", f"{field} must be positive.")
        if cents_max is not None and cents > cents_max:
            raise refuse("INVALID_AMOUNT", f"{field} must be at most {money.format_usd(cents_max)}.")
        return cents

    return Checked(check, schema)


# Percentages within their limit, as basis points. The patterns are the ranges spelled out.
_PERCENT_PATTERNS = {
    limits.NETWORK_FEE_BPS_MAX: r"^(100(\.0{1,2})?|[1-9]?[0-9](\.[0-9]{1,2})?)$",
    limits.TRANSFER_FEE_BPS_MAX: r"^([0-5](\.[0-9]{1,2})?|6(\.([0-4][0-9]?|50?))?)$",
}


def percentage(bps_max: int) -> Checked:
    """`Annotated[int, percentage(650)]`: a percentage string (or exact number) as basis points."""
    top = money.format_scaled(bps_max, places=2, trim=True)

    def check(value: Any, info: ValidationInfo) -> int:
        field = _name(info)
        bps = _parse(value, field=field, places=2)
        if bps > bps_max:
            raise refuse("INVALID_PARAMETER", f"{field} must be at most {top}.")
        return bps

    schema = {
        "type": "string",
        "pattern": _PERCENT_PATTERNS[bps_max],
        "description": f"A percentage from 0 to {top}, at most two decimals.",
    }
    return Checked(check, schema)


def _cap_cents(value: Any, info: ValidationInfo) -> int:
    field = _name(info)
    cents = _parse(value, field=field, places=2)
    if cents > limits.CAP_USD_CENTS_MAX:
        top = money.format_usd(limits.CAP_USD_CENTS_MAX)
        raise refuse("INVALID_PARAMETER", f"{field} must be at most {top}.")
    return cents


CapUsd = Annotated[
    int,
    BeforeValidator(_cap_cents),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(0|[1-9][0-9]{0,7})(\.[0-9]{1,2})?$",
            "description": "USD as a decimal string; null means the environment's default.",
        }
    ),
]


# -- identity -----------------------------------------------------------------------------------


def _email(value: Any, info: ValidationInfo) -> str:
    field = _name(info)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise refuse("MISSING_PARAMETER", f"{field} is required.")
    if not isinstance(value, str):
        raise refuse("INVALID_PLAYER_EMAIL", f"{field} must be a valid email address.")
    try:
        return normalize_email(value, field=field)
    except errors.InvalidRequest as exc:
        raise refuse(exc.error_code, exc.message) from exc


# The documented shape is a plain ASCII subset of what `normalize_email` accepts.
EMAIL_SCHEMA = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,40}(\.[A-Za-z0-9-]{1,40}){1,2}$",
    "maxLength": limits.EMAIL_LEN_MAX,
    "examples": ["player@example.com"],
    "description": "Case-insensitive: one wallet per address per tenant.",
}
Email = Annotated[str, BeforeValidator(_email), WithJsonSchema(EMAIL_SCHEMA)]


def _contact_email(value: Any, info: ValidationInfo) -> str:
    """An address to write to, not a wallet's: the same rule, refused as INVALID_PARAMETER."""
    try:
        return _email(value, info)
    except PydanticCustomError as exc:
        if exc.type == CODE_PREFIX + "INVALID_PLAYER_EMAIL":
            raise refuse("INVALID_PARAMETER", f"{_name(info)} must be a valid email address.") from exc
        raise


ContactEmail = Annotated[
    str,
    BeforeValidator(_contact_email),
    WithJsonSchema({**EMAIL_SCHEMA, "examples": ["finance@yourgame.com"], "description": "Told of every status."}),
]
IdempotencyKey = Annotated[
    str,
    Codes(missing="MISSING_IDEMPOTENCY_KEY", invalid="INVALID_IDEMPOTENCY_KEY"),
    Field(
        min_length=1,
        max_length=limits.IDEMPOTENCY_KEY_LEN_MAX,
        json_schema_extra={"pattern": NO_NUL},
        description="Unique per tenant: generate one per logical operation and resend it on every retry.",
    ),
]
TenantId = Annotated[str, Field(pattern=limits.TENANT_ID_PATTERN)]
# A tenant named in a body: the tenants service answers 404 for one that does not exist.
TenantRef = Annotated[
    str, Field(min_length=1, max_length=limits.ID_LEN_MAX, json_schema_extra={"pattern": limits.TENANT_ID_PATTERN})
]
PATH_ID_SCHEMA = {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}$"}
# Path parameters that are not ids, by name.
PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "day": {
        "type": "string",
        "format": "date",
        "pattern": r"^\d{4}-\d{2}-\d{2}$",
        "description": "A UTC day, YYYY-MM-DD, not after today.",
    },
}


# -- metadata -----------------------------------------------------------------------------------


def _json_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Past 20 digits it is no number metadata needs, and int() of 1e999999999 would take a
        # billion digits of memory: refused (TypeError) before anything writes it out.
        if not value.is_finite() or abs(value.adjusted()) > 20:
            raise TypeError("a number out of range")
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def metadata_json(value: dict[str, Any] | None) -> str:
    """Compact JSON text of metadata that `Metadata` accepted ("" for none)."""
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), default=_json_number, allow_nan=False)


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > limits.METADATA_KEYS_MAX or any(len(k) > limits.METADATA_KEY_LEN_MAX for k in value):
        raise refuse(
            "INVALID_PARAMETER",
            f"metadata holds at most {limits.METADATA_KEYS_MAX} keys of at most {limits.METADATA_KEY_LEN_MAX}"
            " characters.",
        )
    # JSON numbers arrive as Decimal (never float, for amounts); in metadata they stay numbers.
    try:
        text_ = metadata_json(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise refuse("INVALID_PARAMETER", "metadata holds a number out of range.") from exc
    if len(text_.encode()) > limits.METADATA_BYTES_MAX:
        raise refuse("INVALID_PARAMETER", f"metadata must be at most {limits.METADATA_BYTES_MAX} bytes as JSON.")
    return value


# Documented: flat values with plain keys, which can never pass 8 KB; nested values are accepted
# too and count toward the 8 KB.
_META_TEXT = r"^[A-Za-z0-9 _.:-]*$"
METADATA_SCHEMA = {
    "type": ["object", "null"],
    "maxProperties": limits.METADATA_KEYS_MAX,
    "propertyNames": {"maxLength": limits.METADATA_KEY_LEN_MAX, "pattern": _META_TEXT},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": 64, "pattern": _META_TEXT},
            {"type": "integer", "minimum": -(2**53), "maximum": 2**53},
            {"type": "boolean"},
            {"type": "null"},
        ]
    },
    "description": f"Your own data, echoed in events: at most {limits.METADATA_KEYS_MAX} keys of at most"
    f" {limits.METADATA_KEY_LEN_MAX} characters, {limits.METADATA_BYTES_MAX} bytes as JSON.",
    "examples": [{"your_user_id": "u_42"}],
}
Metadata = Annotated[dict[str, Any], AfterValidator(_metadata), WithJsonSchema(METADATA_SCHEMA)]


# -- query strings --------------------------------------------------------------------------------


def query_int(lo: int, hi: int) -> Checked:
    """A whole number in a query string: ASCII digits only ("²", "1.5", "" are refused)."""

    def check(value: Any, info: ValidationInfo) -> int:
        field = _name(info)
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value):
            number = int(value)
        else:
            number = lo - 1
        if not lo <= number <= hi:
            raise refuse("INVALID_PARAMETER", f"{field} must be a whole number from {lo} to {hi}.")
        return number

    return Checked(check, {"type": "integer", "minimum": lo, "maximum": hi})


TIME_PATTERN = (
    r"^(19[7-9][0-9]|20[0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])$"
)
TIME_SCHEMA = {
    "type": "string",
    "pattern": TIME_PATTERN,
    "examples": ["2026-01-31T12:00:00Z"],
    "description": "An ISO 8601 time; without an offset it is UTC.",
}


# -- base models --------------------------------------------------------------------------------


class Request(BaseModel):
    """A JSON body: exact types (no "2" for 2), no field the declaration does not name."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Query(BaseModel):
    """A query string: every value a string; parameters the route does not use are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class Empty(Request):
    """No fields (an empty object, or no body at all)."""


def printable(max_len: int) -> Checked:
    """`Annotated[str, printable(200)]`: text with something in it, no control characters (stored
    stripped)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value  # the str type refuses it
        stripped = value.strip()
        if not stripped or len(value) > max_len or any(ord(c) < 32 for c in stripped):
            raise refuse(
                "INVALID_PARAMETER", f"{_name(info)} must be 1 to {max_len} printable characters, not only spaces."
            )
        return stripped

    schema = {
        "type": "string",
        "minLength": 1,
        "maxLength": max_len,
        "pattern": r"^[^\x00-\x1f]*[^\x00-\x1f\s][^\x00-\x1f]*$",
    }
    return Checked(check, schema)


def _time(value: Any, info: ValidationInfo) -> datetime.datetime:
    field = _name(info)
    problem = f"{field} must be an ISO 8601 time such as 2026-01-31T12:00:00Z."
    if not isinstance(value, str) or len(value) > 64:
        raise refuse("INVALID_PARAMETER", problem)
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise refuse("INVALID_PARAMETER", problem) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    try:
        timestamp_pb2.Timestamp().FromDatetime(parsed)
    except (ValueError, OverflowError) as exc:
        raise refuse("INVALID_PARAMETER", f"{field} is out of range.") from exc
    return parsed


IsoTime = Annotated[datetime.datetime, BeforeValidator(_time), WithJsonSchema(TIME_SCHEMA)]


def timestamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts
