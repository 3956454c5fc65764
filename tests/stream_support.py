"""Reading a tenant's events straight off JetStream, as the webhooks service does: one reader for
every test that checks what was announced."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import nats

from devstack.stack import Stack
from tests.helpers import eventually

Seen = dict[int, dict[str, Any]]  # stream sequence -> event


async def read_events(
    stack: Stack, tenant_id: str, family: str, done: Callable[[Seen], bool], *, timeout_s: float = 20.0
) -> Seen:
    """The `family`.* events of one tenant (`purchase`, `transfer`, ...) by stream sequence, read
    until `done(seen)` holds (or fail after `timeout_s`). Every message must carry its event id as
    `Nats-Msg-Id` and sit on the subject of its tenant and type."""
    prefix = stack.env.get("INVO_NATS_SUBJECT_PREFIX", "invo.events")
    stream = stack.env.get("INVO_NATS_STREAM", "INVO_EVENTS")
    seen: Seen = {}
    nc = await nats.connect(stack.env["INVO_NATS_URL"])
    try:
        sub = await nc.jetstream().pull_subscribe(f"{prefix}.{tenant_id}.{family}.>", stream=stream)

        async def arrived() -> bool:
            try:
                msgs = await sub.fetch(50, timeout=0.5)
            except nats.errors.TimeoutError:
                msgs = []
            for m in msgs:
                event = json.loads(m.data)
                assert m.headers is not None and m.headers["Nats-Msg-Id"] == event["event_id"]
                assert m.subject == f"{prefix}.{tenant_id}.{event['event_type']}"
                seen[m.metadata.sequence.stream] = event
                await m.ack()
            return done(seen)

        await eventually(arrived, timeout_s=timeout_s, interval_s=0.1)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return seen
