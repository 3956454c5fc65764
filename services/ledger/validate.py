"""The ledger's checks of what a request carries, one function per field kind, and its limits.

Every check raises `InvalidRequest` (with `param` where a partner-facing field is meant) before
anything is queued for the writer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from invo.v1 import ledger_pb2

from services.common import errors, limits
from services.common import idempotency as idem_rules
from services.ledger import chart

TENANT_ID_RE = limits.TENANT_ID_RE
TXN_ID_RE = re.compile(r"^txn_[0-9A-Z]{26}$")
REFERENCE_RE = re.compile(r"^[A-Za-z0-9_:.-]{1,64}$")
NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_:.-]{0,39}$")
KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
POSTINGS_MAX = 16
# The limits callers see are common.limits', shared with the gateway's declarations.
AMOUNT_MAX = limits.LEDGER_AMOUNT_MINOR_MAX
QUANTITY_MAX = limits.QUANTITY_MAX
METADATA_BYTES_MAX = limits.METADATA_BYTES_MAX
REASON_LEN_MAX = limits.REASON_LEN_MAX
HOLD_EXPIRY_MS_MAX = 30 * 86400 * 1000
BALANCES_MAX = limits.BATCH_EMAILS_MAX
ENTRIES_LIMIT_MAX = limits.ENTRIES_LIMIT_MAX
EXPORT_CHUNK_MAX = 5000


def tenant(tenant_id: str) -> str:
    if not TENANT_ID_RE.match(tenant_id):
        raise errors.InvalidRequest("tenant_id is not a tenant id", error_code="INVALID_TENANT_ID")
    return tenant_id


def idempotency(idem: ledger_pb2.Idempotency) -> tuple[str, str]:
    if not NAMESPACE_RE.match(idem.namespace):
        raise errors.InvalidRequest("idempotency namespace is malformed")
    return idem.namespace, idem_rules.valid_key(idem.key)


def scoped_key(tenant_id: str, idem: ledger_pb2.Idempotency) -> tuple[str, str]:
    """(scope, key): keys of different tenants and callers never meet."""
    namespace, key = idempotency(idem)
    return f"{tenant_id}:{namespace}", key


def metadata(text: str) -> dict[str, Any]:
    if not text:
        return {}
    if len(text.encode()) > METADATA_BYTES_MAX:
        raise errors.InvalidRequest(f"metadata must be at most {METADATA_BYTES_MAX} bytes as JSON.")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise errors.InvalidRequest("metadata must be a JSON object.") from exc
    if not isinstance(value, dict):
        raise errors.InvalidRequest("metadata must be a JSON object.")
    return value


def amount(value: int, field: str = "amount_minor") -> int:
    """A positive amount within bounds."""
    if not 0 < value <= AMOUNT_MAX:
        raise errors.InvalidRequest(
            f"{field} must be greater than zero and within bounds.",
            error_code="INVALID_PARAMETER",
            extra={"param": field},
        )
    return value


def share(value: int, field: str) -> int:
    """A part of a split: zero allowed."""
    if not 0 <= value <= AMOUNT_MAX:
        raise errors.InvalidRequest(f"{field} must be within 0 and bounds.")
    return value


def reference(value: str, field: str) -> str:
    """An id of another service's object (order, transfer, payout) recorded with the transaction."""
    if not REFERENCE_RE.match(value):
        raise errors.InvalidRequest(f"{field} is required and must be an id.")
    return value


def reason(value: str) -> str:
    text = value.strip()
    if not text or len(text) > REASON_LEN_MAX:
        raise errors.InvalidRequest(
            f"reason must be 1 to {REASON_LEN_MAX} characters.",
            error_code="INVALID_PARAMETER",
            extra={"param": "reason"},
        )
    return text


def postings(items: Any, tenant_id: str) -> list[tuple[str, int]]:
    """Caller-named postings (the `Transfer` and `CreateHold` RPCs): balanced, each account known
    and the tenant's own or the network's."""
    if not 2 <= len(items) <= POSTINGS_MAX:
        raise errors.InvalidRequest(f"a transaction has 2 to {POSTINGS_MAX} postings")
    out: list[tuple[str, int]] = []
    for p in items:
        chart.parse(p.account)
        if p.amount_minor == 0 or abs(p.amount_minor) > AMOUNT_MAX:
            raise errors.InvalidRequest("a posting moves a non-zero amount within bounds")
        out.append((p.account, p.amount_minor))
    if len({c for c, _ in out}) != len(out):
        raise errors.InvalidRequest("an account appears at most once in a transaction")
    if sum(a for _, a in out) != 0:
        raise errors.InvalidRequest("postings must sum to zero", error_code="UNBALANCED_TRANSACTION")
    chart.check_owned({c for c, _ in out}, tenant_id)
    return out


def kind(value: str) -> str:
    if not KIND_RE.match(value):
        raise errors.InvalidRequest("kind must be a short snake_case word")
    return value


def event(event_type: str, data_json: str) -> tuple[str, dict[str, Any]] | None:
    if not event_type:
        return None
    if not EVENT_TYPE_RE.match(event_type):
        raise errors.InvalidRequest("event_type is malformed")
    return event_type, metadata(data_json)


def outbox_event(msg: ledger_pb2.OutboxEvent) -> tuple[str, dict[str, Any]] | None:
    return event(msg.event_type, msg.data_json)


def limit(value: int, *, default: int, most: int, field: str = "limit") -> int:
    out = value or default
    if not 1 <= out <= most:
        raise errors.InvalidRequest(f"{field} must be from 1 to {most}")
    return out
