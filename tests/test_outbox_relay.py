"""The transactional outbox, the relay: each event published once and in order, exactly once when
a relay is killed between publish and mark or two relays run at once, pruning only what was
published long enough ago, and a round whose publish is refused marks nothing.

Each test has its own schema (migrated with the shared outbox migration), its own JetStream stream
and its own subject prefix, all removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import nats
import pytest

from services.common import db, events
from tests.helpers import eventually
from tests.outbox_support import Outbox, emit_committed, outbox, relay_until_empty

__all__ = ["outbox"]  # the fixture, imported for this module's tests


REPO_ROOT = Path(__file__).resolve().parent.parent


# -- the relay --------------------------------------------------------------------------------


async def test_relay_publishes_each_event_once_in_order(outbox: Outbox) -> None:
    specs: list[tuple[str, str, dict[str, Any]]] = [
        ("ten_a", "payment.completed", {"n": 1}),
        ("ten_b", "transfer.created", {"n": 2}),
        ("ten_a", "payout.requested", {"n": 3, "note": "ünïcode ✓"}),
    ]
    ids = await emit_committed(outbox, specs)
    ids += await emit_committed(outbox, [("ten_c", "ledger.posted", {"n": i}) for i in range(4, 8)])
    assert len(set(ids)) == 7

    relay = outbox.relay(batch_max=3)
    assert await relay_until_empty(relay) == [3, 3, 1, 0]

    rows = await outbox.rows()
    assert [r["event_id"] for r in rows] == ids
    assert all(r["published_at"] is not None for r in rows)
    assert await outbox.stream_count() == 7

    msgs = await outbox.consume_all()
    assert len(msgs) == 7
    for msg, row in zip(msgs, rows, strict=True):  # stream order is seq order
        assert msg.subject == f"{outbox.prefix}.{row['tenant_id']}.{row['event_type']}"
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == row["event_id"]
        assert msg.data == row["body"].encode()  # byte for byte, never re-serialised

    # Nothing left: a second pass publishes nothing and marks nothing.
    marked = [r["published_at"] for r in rows]
    assert await relay.relay_once() == 0
    assert await outbox.stream_count() == 7
    assert [r["published_at"] for r in await outbox.rows()] == marked


CRASHING_RELAY = textwrap.dedent(
    """
    import asyncio
    import os
    import pathlib
    import sys

    from services.common import db, events

    database_url, schema, nats_url, prefix, app_name, record = sys.argv[1:]


    def die(event_id: str) -> None:
        # JetStream has acknowledged the publish; the UPDATE marking it sent has not run.
        pathlib.Path(record).write_text(event_id)
        os._exit(137)


    async def main() -> int:
        pool = await db.create_pool(
            database_url, schema, application_name=app_name, max_size=2, statement_timeout_ms=5000
        )
        nc = await events.connect_nats(nats_url, name=app_name)
        try:
            relay = events.OutboxRelay(
                pool, nc.jetstream(), subject_prefix=prefix, batch_max=100,
                poll_interval_s=0.05, retention_s=3600.0, after_publish=die,
            )
            await relay.relay_once()
        finally:
            await nc.close()
            await pool.close()
        return 3  # the hook never ran


    sys.exit(asyncio.run(main()))
    """
)


async def test_event_reaches_jetstream_exactly_once_when_relay_is_killed_between_publish_and_mark(
    outbox: Outbox, tmp_path: Path
) -> None:
    ids = await emit_committed(outbox, [(f"ten_{i % 2}", "payment.completed", {"i": i}) for i in range(5)])
    script = tmp_path / "crashing_relay.py"
    script.write_text(CRASHING_RELAY)
    record = tmp_path / "published_before_crash"
    app_name = f"crashing-relay-{secrets.token_hex(4)}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen"), env.get("PYTHONPATH", "")])
    argv = [sys.executable, str(script), outbox.database_url, outbox.schema, outbox.nats_url, outbox.prefix]
    proc = await asyncio.to_thread(
        subprocess.run,
        [*argv, app_name, str(record)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 137, proc.stderr
    assert record.read_text() == ids[0]  # it died right after the first publish was acknowledged

    # PostgreSQL notices the dead client and rolls its transaction back, releasing the row locks.
    async def crashed_session_gone() -> bool:
        n = await outbox.pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name)
        return bool(n == 0)

    await eventually(crashed_session_gone)
    rows = await outbox.rows()
    assert [r["event_id"] for r in rows] == ids
    assert all(r["published_at"] is None for r in rows)  # nothing was marked sent
    # But the first event is in JetStream (and, the relay pipelining its publishes, maybe more).
    in_stream = await outbox.stream_count()
    assert 1 <= in_stream <= 5
    before = await outbox.consume_all()
    assert [m.headers["Nats-Msg-Id"] if m.headers else None for m in before] == ids[:in_stream]

    # A healthy relay republishes the whole batch; JetStream drops the copy of the first event.
    assert sum(await relay_until_empty(outbox.relay())) == 5
    rows = await outbox.rows()
    assert all(r["published_at"] is not None for r in rows)
    assert await outbox.stream_count() == 5

    msgs = await outbox.consume_all()
    got = [m.headers["Nats-Msg-Id"] if m.headers else None for m in msgs]
    assert got == ids  # all five, each once, in order
    assert got.count(ids[0]) == 1
    assert [m.data for m in msgs] == [r["body"].encode() for r in rows]


async def test_two_concurrent_relays_publish_each_event_exactly_once(outbox: Outbox) -> None:
    total = 200
    ids = await emit_committed(outbox, [(f"ten_{i % 3}", "transfer.created", {"i": i}) for i in range(total)])

    token = secrets.token_hex(4)
    pools = [
        await db.create_pool(
            outbox.database_url,
            outbox.schema,
            application_name=f"relay-{k}-{token}",
            max_size=4,
            statement_timeout_ms=5000,
        )
        for k in range(2)
    ]
    clients = [await events.connect_nats(outbox.nats_url, name=f"relay-{k}-{token}") for k in range(2)]
    published: list[list[str]] = [[], []]
    try:
        relays = [
            outbox.relay(pools[k], clients[k].jetstream(), batch_max=10, after_publish=published[k].append)
            for k in range(2)
        ]
        rounds = await asyncio.gather(*(relay_until_empty(r) for r in relays))
    finally:
        for nc in clients:
            await nc.close()
        for pool in pools:
            await pool.close()

    # Each row was handed to exactly one relay, and each relay published only its own rows.
    assert sum(sum(r) for r in rounds) == total
    assert all(published), "both relays should have taken a share of the work"
    every_publish = published[0] + published[1]
    assert len(every_publish) == total
    assert sorted(every_publish) == sorted(ids)
    assert all(r["published_at"] is not None for r in await outbox.rows())

    assert await outbox.stream_count() == total
    msgs = await outbox.consume_all()
    msg_ids = [m.headers["Nats-Msg-Id"] if m.headers else None for m in msgs]
    assert len(msg_ids) == total
    assert len(set(msg_ids)) == total
    assert set(msg_ids) == set(ids)


async def test_prune_deletes_only_published_rows_older_than_retention(outbox: Outbox) -> None:
    old_a, old_b, recent = await emit_committed(outbox, [("ten_a", "payment.completed", {"i": i}) for i in range(3)])
    assert await outbox.relay().relay_once() == 3
    (pending,) = await emit_committed(outbox, [("ten_a", "payment.completed", {"i": 3})])
    # Two published an hour and more ago; the unsent one is old too, but unsent rows are never pruned.
    await outbox.pool.execute(
        "UPDATE outbox SET published_at = now() - interval '2 hours' WHERE event_id = ANY($1::text[])",
        [old_a, old_b],
    )
    await outbox.pool.execute("UPDATE outbox SET created_at = now() - interval '3 hours' WHERE event_id = $1", pending)

    assert await outbox.relay(retention_s=3600.0).prune() == 2
    assert [r["event_id"] for r in await outbox.rows()] == [recent, pending]

    assert await outbox.relay(retention_s=0).prune() == 1
    rows = await outbox.rows()
    assert [r["event_id"] for r in rows] == [pending]
    assert rows[0]["published_at"] is None

    assert await outbox.relay(retention_s=0).prune() == 0
    assert len(await outbox.rows()) == 1


async def test_a_round_with_a_refused_publish_marks_nothing_and_the_relay_goes_on(outbox: Outbox) -> None:
    ids = await emit_committed(outbox, [("ten_a", "payment.completed", {"i": i}) for i in range(5)])
    # A relay whose subjects no stream captures: JetStream answers "no responders" for each.
    stray = events.OutboxRelay(
        outbox.pool,
        outbox.js,
        subject_prefix=f"nobody_{secrets.token_hex(4)}",
        batch_max=100,
        poll_interval_s=0.05,
        retention_s=3600.0,
    )
    with pytest.raises(nats.errors.Error):
        await stray.relay_once()
    assert all(r["published_at"] is None for r in await outbox.rows())
    assert await outbox.stream_count() == 0
    # The client's slots for pending publishes were all given back: later rounds still publish.
    for _ in range(3):
        with pytest.raises(nats.errors.Error):
            await stray.relay_once()
    assert sum(await relay_until_empty(outbox.relay())) == 5
    assert [m.headers["Nats-Msg-Id"] if m.headers else None for m in await outbox.consume_all()] == ids
