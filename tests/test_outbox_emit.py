"""The transactional outbox, emit: an event needs a transaction, commits with it (or not at all),
and is published in the documented envelope.

Each test has its own schema (migrated with the shared outbox migration), its own JetStream stream
and its own subject prefix, all removed at the end.
"""

from __future__ import annotations

import datetime
import json
import re

import pytest

from services.common import events
from tests.outbox_support import Outbox, outbox

__all__ = ["outbox"]  # the fixture, imported for this module's tests


CREATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
ENVELOPE_FIELDS = {"event_id", "event_type", "created_at", "tenant_id", "data"}


# -- emit -------------------------------------------------------------------------------------


async def test_emit_requires_a_transaction_and_commits_with_it(outbox: Outbox) -> None:
    async with outbox.pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await events.emit(conn, tenant_id="ten_a", event_type="payment.completed", data={"x": 1})
    assert await outbox.rows() == []

    data = {"payment_id": "pay_1", "amount": "12.50", "nested": {"ok": True, "list": [1, 2]}}
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    async with outbox.pool.acquire() as conn:
        async with conn.transaction():
            event_id = await events.emit(conn, tenant_id="ten_a", event_type="payment.completed", data=data)
            # Not visible to anyone else until the change it announces commits.
            assert await outbox.pool.fetchval("SELECT count(*) FROM outbox") == 0
    after = datetime.datetime.now(datetime.UTC)

    rows = await outbox.rows()
    assert len(rows) == 1
    row = rows[0]
    assert event_id.startswith("evt_") and len(event_id) > len("evt_")
    assert row["event_id"] == event_id
    assert row["tenant_id"] == "ten_a"
    assert row["event_type"] == "payment.completed"
    assert row["published_at"] is None
    body = json.loads(row["body"])
    assert set(body) == ENVELOPE_FIELDS
    assert body["event_id"] == event_id
    assert body["event_type"] == "payment.completed"
    assert body["tenant_id"] == "ten_a"
    assert body["data"] == data
    assert CREATED_AT.match(body["created_at"]), body["created_at"]
    created = datetime.datetime.strptime(body["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert before <= created <= after

    # A rolled-back transaction leaves nothing behind, whether rolled back explicitly or by an error.
    async with outbox.pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        rolled_back = await events.emit(conn, tenant_id="ten_a", event_type="payment.failed", data={})
        await tr.rollback()
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                errored = await events.emit(conn, tenant_id="ten_a", event_type="payment.failed", data={})
                _ = 1 / 0
    assert rolled_back != errored
    assert [r["event_id"] for r in await outbox.rows()] == [event_id]
