"""The webhooks service outlives the outage of each of its dependencies and delivers once it is over.

Its loops (consumer, sender, outcome writer) run supervised: a round that fails is logged and
retried with backoff. Here the tenants service is stopped, and PostgreSQL is frozen (SIGSTOP)
for longer than the client's command timeout, while events that need delivering arrive; the
tests wait until the service's log shows the failed rounds (so the outage was met, not
dodged), check that no process died, end the outage and check that every event reaches the
receiver exactly once, with a valid signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext

from devstack import devservers
from devstack.stack import Stack
from services.common import events, ids
from tests.helpers import Api, eventually
from tests.webhooks_support import (
    RESTARTER,
    Receiver,
    list_all,
    send_test,
    settled,
    tenant_for,
    verify,
)

OUTAGE_TIMEOUT_S = 40.0  # how long the loops may take to meet the outage (and to recover)


class LogWatch:
    """The lines a service logs from now on: JSON, one per line."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.proc = stack.procs[name]
        self.path = stack.logs / f"{name}.log"
        self.offset = self.path.stat().st_size

    def entries(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            lines = f.read().decode(errors="replace").splitlines()
        found = []
        for line in lines:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue  # a line being written, or not ours
        return found

    def failed_rounds(self, loop: str) -> int:
        return sum(1 for e in self.entries() if e.get("level") == "warning" and e.get("loop") == loop)

    async def wait_for_failed_round(self, loop: str) -> None:
        """Until `loop` logs a failed round, or the process ends (which the caller then reports)."""

        async def met() -> bool:
            return self.failed_rounds(loop) > 0 or self.proc.poll() is not None

        await eventually(met, timeout_s=OUTAGE_TIMEOUT_S, interval_s=0.1)


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """test_webhooks' receivers, made here: a fixture imported from another module would be
    shadowed by the test's parameter of the same name."""
    started: list[Receiver] = []

    async def make(**kw: Any) -> Receiver:
        started.append(rx := Receiver(**kw))
        await rx.start()
        return rx

    try:
        yield make
    finally:
        for rx in started:
            await rx.close()


@pytest.fixture
async def js(stack: Stack) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(stack.env["INVO_NATS_URL"])
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def publish_event(stack: Stack, js: JetStreamContext, tenant_id: str) -> str:
    """An event as the outbox relay publishes it (envelope, subject, Nats-Msg-Id): the way an
    event reaches the webhooks service whatever else is down."""
    event_id = ids.new_id("evt")
    body = events.envelope(event_id=event_id, event_type="balance.adjusted", tenant_id=tenant_id, data={"n": 1})
    prefix = stack.env.get("INVO_NATS_SUBJECT_PREFIX", "invo.events")
    await js.publish(
        events.subject(prefix, tenant_id, "balance.adjusted"), body.encode(), headers={"Nats-Msg-Id": event_id}
    )
    return event_id


async def delivered_once(api: Api, rx: Receiver, t: dict[str, Any], event_id: str, *, calls: int = 1) -> None:
    """The event's delivery is `delivered` after exactly `calls` attempts, each of which reached
    the receiver once and verifies with the tenant's secret."""

    async def done() -> dict[str, Any] | None:
        log = await list_all(api, "/api/webhooks/deliveries", key=t["sdk_key"])
        mine = [d for d in log if d["event_id"] == event_id]
        return mine[0] if mine and mine[0]["status"] == "delivered" else None

    delivery = await eventually(done, timeout_s=OUTAGE_TIMEOUT_S, interval_s=0.2)
    assert delivery is not None
    assert delivery["attempts"] == calls, delivery
    got = rx.of(event_id)
    assert [c.answered for c in got] == [200] * calls, got
    for call in got:
        verify(call, t["webhook_signing_secret"])


async def test_a_tenants_outage_never_ends_the_webhooks_service_and_delivery_resumes_after_it(
    api: Api, stack: Stack, js: JetStreamContext, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    rx = await receivers()
    t = await tenant_for(api, rx)
    first = await send_test(api, t["sdk_key"])  # delivered before the outage, redelivered in it
    await settled(api, t["sdk_key"], first["delivery_id"], "delivered")
    log = LogWatch(stack, "webhooks")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(RESTARTER, stack.stop_process, "tenants")
    try:
        # The consumer needs tenants to record an event (its URL), the sender to sign (the secret).
        event_id = await publish_event(stack, js, t["tenant_id"])
        # An operator's redelivery must be recorded first, in the action log the tenants service
        # keeps: refused while it is away, and nothing is done.
        red = await api.post(f"/admin/webhooks/deliveries/{first['delivery_id']}/redeliver", admin=True)
        assert red.status == 503 and "could not be recorded" in red.body["message"], red
        await log.wait_for_failed_round("webhook-consumer")
        assert stack.dead() == []
        assert rx.of(event_id) == [] and len(rx.of(first["event_id"])) == 1
    finally:
        await loop.run_in_executor(RESTARTER, stack.start_process, "tenants")

    async def redelivered() -> bool:  # once the gateway reaches the tenants service again
        again = await api.post(f"/admin/webhooks/deliveries/{first['delivery_id']}/redeliver", admin=True)
        assert again.status in (200, 503), again
        return again.status == 200

    await eventually(redelivered, timeout_s=30)
    await delivered_once(api, rx, t, event_id)
    await delivered_once(api, rx, t, first["event_id"], calls=2)  # the first delivery and the redelivery
    assert stack.dead() == []


async def test_a_frozen_database_never_ends_the_webhooks_service_and_delivery_resumes_after_it(
    api: Api, stack: Stack, js: JetStreamContext, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    if stack.postgres is None or stack.postgres.proc is None:
        pytest.skip("PostgreSQL is not ours to freeze (INVO_DATABASE_URL names a server)")
    rx = await receivers()
    t = await tenant_for(api, rx)
    log = LogWatch(stack, "webhooks")
    # The postmaster first, so that it forks no new backend, then every process it forked (each
    # backend is a process group of its own, so the postmaster's group is not enough).
    postmaster = stack.postgres.proc.pid
    os.kill(postmaster, signal.SIGSTOP)
    frozen = [postmaster, *devservers.children_of(postmaster)]
    for pid in frozen[1:]:
        os.kill(pid, signal.SIGSTOP)
    try:
        event_id = await publish_event(stack, js, t["tenant_id"])
        # The sender's claim waits on a frozen server until the client's command timeout (the
        # statement timeout plus a second) gives up: a failed round, not a dead process.
        await log.wait_for_failed_round("webhook-sender")
        assert stack.dead() == []
    finally:
        for pid in reversed(frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    await delivered_once(api, rx, t, event_id)
    assert stack.dead() == []
