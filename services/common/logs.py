"""Structured JSON logs carrying the request id of the call being served."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import secrets
import sys
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# The HTTP header and the gRPC metadata key that carry the request id across hops.
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_METADATA = "x-request-id"
_REQUEST_ID_MAX_LEN = 64

# The operator (`op_...`) an admin request acts for, carried across gRPC like the request id so
# that every service can record who made a change; "" outside an operator's request.
operator_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("operator_id", default="")
OPERATOR_ID_METADATA = "x-operator-id"
_OPERATOR_ID_MAX_LEN = 64


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def accept_operator_id(value: str | None) -> str:
    """An operator id from another service's metadata if it looks like one, else "" (none)."""
    if (
        value
        and value.startswith("op_")
        and len(value) <= _OPERATOR_ID_MAX_LEN
        and all(c.isalnum() or c == "_" for c in value)
    ):
        return value
    return ""


def accept_request_id(value: str | None) -> str:
    """A caller's request id if it is short and printable, else a new one."""
    if value and len(value) <= _REQUEST_ID_MAX_LEN and all(c.isalnum() or c in "-_." for c in value):
        return value
    return new_request_id()


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        oid = operator_id_var.get()
        if oid:
            entry["operator_id"] = oid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates what the gateway logs itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The stripe SDK logs every request at INFO; our own lines say what matters.
    logging.getLogger("stripe").setLevel(logging.WARNING)


def fields(**kw: Any) -> dict[str, Any]:
    """`log.info("msg", extra=fields(tenant_id=...))` adds structured fields to one line."""
    return {"fields": kw}
