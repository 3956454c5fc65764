"""Idempotency, one way for every service: a caller-supplied key, a fingerprint of the request
stored with it, and the first answer.

- The same key with the same request replays the first answer (`duplicate: true` to partners).
- The same key with another request is 400 `IDEMPOTENCY_KEY_REUSED`, never a second write.
- A key is 1 to `KEY_LEN_MAX` characters; keys are scoped (tenant and caller) by the service, so
  keys of different tenants never meet.

The ledger applies this inside its batches (`services/ledger/engine.py`), payments on the order
row of a `purchase_reference`; a service with a plain table of records uses `Records`. All of
them fingerprint with `fingerprint()` and refuse with `refuse()`, so the answers are the same.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from services.common import errors, limits
from services.common.crypto import request_hash

KEY_LEN_MAX = limits.IDEMPOTENCY_KEY_LEN_MAX


class IdempotencyKeyReused(errors.InvalidRequest):
    default_error = "idempotency_error"
    default_error_code = "IDEMPOTENCY_KEY_REUSED"


def fingerprint(request: dict[str, Any]) -> bytes:
    """What is stored with a key: the same request always gives the same bytes."""
    return request_hash(request)


def valid_key(key: object, *, param: str = "idempotency_key") -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= KEY_LEN_MAX:
        raise errors.InvalidRequest(
            f"{param} must be a string of 1 to {KEY_LEN_MAX} characters.",
            error_code="INVALID_IDEMPOTENCY_KEY",
            extra={"param": param},
        )
    return key


def refuse(key: str, *, param: str = "idempotency_key") -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"This {param} was already used with a different request.", extra={"param": param, param: key[:KEY_LEN_MAX]}
    )


def check_replay(stored: bytes, digest: bytes, *, key: str, param: str = "idempotency_key") -> None:
    """Raise unless `digest` is the fingerprint stored with `key`."""
    if bytes(stored) != digest:
        raise refuse(key, param=param)


class Records:
    """Records in a table of the calling service's schema with the columns
    `(scope text, key text, request_hash bytea, result jsonb, created_at timestamptz DEFAULT now(),
    PRIMARY KEY (scope, key))`. Use both calls in the transaction of the write they guard, so the
    record commits with the write or not at all."""

    def __init__(self, table: str = "idempotency") -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError("table must be a plain identifier")
        self.table = table

    async def replay(self, conn: asyncpg.Connection, scope: str, key: str, digest: bytes) -> dict[str, Any] | None:
        """The first answer for this key and request, None if the key is new; refuses another request."""
        row = await conn.fetchrow(
            f"SELECT request_hash, result FROM {self.table} WHERE scope = $1 AND key = $2", scope, key
        )
        if row is None:
            return None
        check_replay(row["request_hash"], digest, key=key)
        result: dict[str, Any] = json.loads(row["result"])
        return result

    async def record(
        self, conn: asyncpg.Connection, scope: str, key: str, digest: bytes, result: dict[str, Any]
    ) -> None:
        await conn.execute(
            f"INSERT INTO {self.table} (scope, key, request_hash, result) VALUES ($1, $2, $3, $4::jsonb)",
            scope,
            key,
            digest,
            json.dumps(result),
        )
