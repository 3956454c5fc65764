"""common.idempotency: the one rule every service applies to a caller's key (same request
replays, another request with the key is refused), checked on its own and on a real table."""

from __future__ import annotations

import secrets

import asyncpg
import pytest

from devstack.stack import Stack
from services.common import db, errors, idempotency


def test_a_key_is_one_to_255_characters() -> None:
    assert idempotency.valid_key("k") == "k"
    assert idempotency.valid_key("k" * 255) == "k" * 255
    for bad in ("", "k" * 256, None, 42):
        with pytest.raises(errors.InvalidRequest) as exc:
            idempotency.valid_key(bad, param="purchase_reference")
        assert exc.value.error_code == "INVALID_IDEMPOTENCY_KEY"
        assert exc.value.extra["param"] == "purchase_reference"


def test_the_same_request_replays_and_another_is_refused() -> None:
    first = idempotency.fingerprint({"amount": 100, "player": "a@b.co"})
    assert idempotency.fingerprint({"player": "a@b.co", "amount": 100}) == first  # key order is not the request
    idempotency.check_replay(first, first, key="k-1")
    with pytest.raises(idempotency.IdempotencyKeyReused) as exc:
        idempotency.check_replay(first, idempotency.fingerprint({"amount": 101, "player": "a@b.co"}), key="k-1")
    assert (exc.value.http_status, exc.value.error_code, exc.value.error) == (
        400,
        "IDEMPOTENCY_KEY_REUSED",
        "idempotency_error",
    )
    assert exc.value.extra == {"param": "idempotency_key", "idempotency_key": "k-1"}


async def test_records_replay_refuse_and_roll_back_with_their_write(stack: Stack) -> None:
    url = stack.env["INVO_DATABASE_URL"]
    schema = f"test_idem_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE idempotency (scope text, key text, request_hash bytea NOT NULL, result jsonb NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (scope, key))"
        )
        records = idempotency.Records()
        digest = idempotency.fingerprint({"n": 1})
        async with conn.transaction():
            assert await records.replay(conn, "tn_A:api", "k", digest) is None
            await records.record(conn, "tn_A:api", "k", digest, {"transaction_id": "txn_1"})
        assert await records.replay(conn, "tn_A:api", "k", digest) == {"transaction_id": "txn_1"}
        # Another scope is another key.
        assert await records.replay(conn, "tn_B:api", "k", idempotency.fingerprint({"n": 2})) is None
        with pytest.raises(idempotency.IdempotencyKeyReused):
            await records.replay(conn, "tn_A:api", "k", idempotency.fingerprint({"n": 2}))
        # A record written in a transaction that fails is gone with it.
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await records.record(conn, "tn_A:api", "k2", digest, {"transaction_id": "txn_2"})
                raise RuntimeError("the guarded write failed")
        assert await records.replay(conn, "tn_A:api", "k2", digest) is None
    finally:
        await conn.close()
        await db.drop_schema(url, schema)
