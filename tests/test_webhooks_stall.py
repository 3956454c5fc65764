"""A database stall longer than 10 s does not end the webhooks service, and delivery resumes after
it with nothing lost (issue 11, finding 2).

The stall is a freeze, not a cut: the service reaches PostgreSQL through a proxy that stops
forwarding without closing anything, so every query hangs until asyncpg's own timeout gives up
(the `claim()` timeout that once ended the sender's task, and with it the process, with exit 0).
The service is a real `python -m services.webhooks` beside the session network's, with its own
schema and stream (tests/shutdown_support.py), so only this test's proxy stands between it and
PostgreSQL and only the events this test publishes reach it.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import nats
import pytest
from invo.v1 import webhooks_pb2, webhooks_pb2_grpc

from devstack.stack import Stack
from services.common import errors, events, grpcutil, ids
from tests.helpers import Api, eventually
from tests.shutdown_support import (
    FreezableProxy,
    OwnWebhooks,
    exited_within,
    remove_own_webhooks,
    start_own_webhooks,
)
from tests.webhooks_support import Receiver, receivers, tenant_for, verify

__all__ = ["receivers"]  # the fixture, imported for this module's tests

STALL_MIN_S = 10.0  # the stall the issue reports: longer than asyncpg's command timeout (6 s)
FAILED_CLAIMS = 2  # the sender's claims that time out in the stall: each takes 6 s or more
RECOVERY_TIMEOUT_S = 60.0  # backoffs (5 s at most), and leases a claim lost in the stall took (7 s)
SLACK_S = 1.5
QUERY_DEADLINE_S = 20.0  # longer than asyncpg's command timeout (statement timeout + 1 s)


def pg_host_port(url: str) -> tuple[str, int]:
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    return host, int(port)


@pytest.fixture
async def stalled(stack: Stack, tmp_path: pathlib.Path) -> AsyncIterator[tuple[OwnWebhooks, FreezableProxy]]:
    """The test's webhooks service, reaching PostgreSQL only through a proxy that can freeze."""
    host, port = pg_host_port(stack.env["INVO_DATABASE_URL"])
    proxy = FreezableProxy(host, port)
    await proxy.start()
    url = stack.env["INVO_DATABASE_URL"].replace(f"@{host}:{port}/", f"@127.0.0.1:{proxy.port}/")
    try:
        own = await start_own_webhooks(stack, tmp_path / "webhooks.log", database_url=url)
        try:
            yield own, proxy
        finally:
            proxy.thaw()
            await remove_own_webhooks(own)
    finally:
        await proxy.close()


def failed_rounds(own: OwnWebhooks, loop: str) -> int:
    return sum(1 for e in own.process.entries() if e.get("level") == "warning" and e.get("loop") == loop)


async def publish(js: Any, own: OwnWebhooks, tenant_id: str, n: int) -> list[str]:
    """Events as the outbox relay publishes them (envelope, subject, Nats-Msg-Id), on the test
    service's own stream."""
    found = []
    for i in range(n):
        event_id = ids.new_id("evt")
        body = events.envelope(event_id=event_id, event_type="balance.adjusted", tenant_id=tenant_id, data={"i": i})
        await js.publish(
            events.subject(own.subject_prefix, tenant_id, "balance.adjusted"),
            body.encode(),
            headers={"Nats-Msg-Id": event_id},
            timeout=5,
        )
        found.append(event_id)
    return found


async def delivered(own: OwnWebhooks, rx: Receiver, event_ids: list[str]) -> None:
    """Until every event has reached the receiver (answered 200) and its delivery is recorded
    as delivered; then no other delivery exists."""
    conn = await asyncpg.connect(own.direct_database_url, timeout=10)
    try:

        async def done() -> bool:
            if not all(any(c.answered == 200 for c in rx.of(e)) for e in event_ids):
                return False
            rows = await conn.fetch(f'SELECT event_id, status FROM "{own.schema}".deliveries')
            return sorted((r["event_id"], r["status"]) for r in rows) == sorted((e, "delivered") for e in event_ids)

        await eventually(done, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.1)
    finally:
        await conn.close()


async def list_deliveries(own: OwnWebhooks, tenant_id: str) -> Any:
    """The delivery log, straight from the test's service (its deadline outlasts the query's
    timeout, so that the answer is the service's, not the deadline's)."""
    async with grpcutil.channel(own.addr) as ch:
        return await grpcutil.call(
            webhooks_pb2_grpc.WebhooksServiceStub(ch).ListDeliveries,
            webhooks_pb2.ListDeliveriesRequest(tenant_id=tenant_id, limit=10),
            timeout_s=QUERY_DEADLINE_S,
        )


async def test_a_database_stall_longer_than_10_s_never_ends_the_webhooks_service_and_nothing_is_lost(
    api: Api,
    stack: Stack,
    stalled: tuple[OwnWebhooks, FreezableProxy],
    receivers: Callable[..., Awaitable[Receiver]],
) -> None:
    own, proxy = stalled
    rx = await receivers()
    t = await tenant_for(api, rx)
    nc = await nats.connect(stack.env["INVO_NATS_URL"], connect_timeout=5)
    try:
        js = nc.jetstream()
        before = await publish(js, own, t["tenant_id"], 3)
        await delivered(own, rx, before)  # so no attempt is in flight when the stall begins

        proxy.freeze()
        frozen_at = time.monotonic()
        during = await publish(js, own, t["tenant_id"], 5)  # NATS is up: only PostgreSQL is away
        # Its API in the stall: the query times out, and the caller is told to retry (a 503 with
        # Retry-After at the gateway), not that something broke.
        listing = asyncio.ensure_future(list_deliveries(own, t["tenant_id"]))

        async def claims_timed_out() -> bool:
            return failed_rounds(own, "webhook-sender") >= FAILED_CLAIMS or not own.process.alive()

        await eventually(claims_timed_out, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.1)
        stalled_s = time.monotonic() - frozen_at
        assert own.process.alive(), f"the service ended in the stall:\n{own.process.tail()}"
        assert stalled_s >= STALL_MIN_S, stalled_s  # two command timeouts: the stall the issue saw
        assert failed_rounds(own, "webhook-consumer") >= 1  # it could not record what it fetched
        assert proxy.held > 0  # queries were stuck in the freeze, not refused
        assert [rx.of(e) for e in during] == [[]] * len(during)
        with pytest.raises(errors.Unavailable) as unavailable:
            await listing
        assert (unavailable.value.error_code, unavailable.value.retry_after_s) == ("SERVICE_UNAVAILABLE", 1)
        proxy.thaw()

        await delivered(own, rx, before + during)
        assert own.process.alive()
        # Each event once: nothing was attempted in the stall, so nothing was sent twice.
        for event_id in before + during:
            (call,) = rx.of(event_id)
            verify(call, t["webhook_signing_secret"])
        assert own.process.logged("webhook-sender recovered after")
    finally:
        await nc.close()

    # And it still stops as it should: promptly, exit 0.
    own.process.terminate()
    await exited_within(own.process, own.stop_budget_s() + SLACK_S)
    assert own.process.proc.returncode == 0, own.process.tail()


# -- what a handler's dependency failure answers (grpcutil._guard) -------------------------------


def _closed_pool() -> BaseException:
    return asyncpg.exceptions.InterfaceError("pool is closing")


def _transaction_on_a_lost_connection() -> BaseException:
    """What a transaction's exit raises after its connection was cut mid-statement (make faults,
    cut-postgres:ledger): an InterfaceError raised in handling the lost connection."""
    try:
        try:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        except asyncpg.exceptions.ConnectionDoesNotExistError:
            raise asyncpg.exceptions.InterfaceError(
                "cannot call Transaction.__aexit__(): the underlying connection is closed"
            ) from None
    except asyncpg.exceptions.InterfaceError as exc:
        exc.__suppress_context__ = False  # as asyncpg raises it: the context kept
        return exc


DEPENDENCY_AWAY: dict[str, Callable[[], BaseException]] = {
    "statement timeout": lambda: asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    "connection lost": lambda: asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
    "pool closing": _closed_pool,
    "transaction on a lost connection": _transaction_on_a_lost_connection,
    "connection closed": lambda: asyncpg.exceptions.InterfaceError("connection is closed"),
    "server starting": lambda: asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    "server shutting down": lambda: asyncpg.exceptions.AdminShutdownError("terminating connection"),
    "command timeout": lambda: TimeoutError(),
    "refused": lambda: ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
    "reset": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "socket": lambda: OSError(113, "No route to host"),
    "nats closed": lambda: nats.errors.ConnectionClosedError(),
    "nats timeout": lambda: nats.errors.TimeoutError(),
    "nats no servers": lambda: nats.errors.NoServersError(),
}
BUGS: dict[str, Callable[[], BaseException]] = {
    "a runtime error": lambda: RuntimeError("a bug"),
    "a key error": lambda: KeyError("missing"),
    "a protocol violation": lambda: asyncpg.exceptions.ProtocolViolationError("bind message supplies 2 parameters"),
    "a connection used after release": lambda: asyncpg.exceptions.InterfaceError(
        "cannot call Connection.fetch(): connection has been released back to the pool"
    ),
    "a unique violation": lambda: asyncpg.exceptions.UniqueViolationError("duplicate key value"),
}


@pytest.fixture
async def raising_server() -> AsyncIterator[str]:
    """A gRPC server behind the services' interceptor whose one method raises what it is asked."""

    async def raise_it(request: bytes, context: Any) -> bytes:
        raise {**DEPENDENCY_AWAY, **BUGS}[request.decode()]()

    handler = grpc.method_handlers_generic_handler(
        "test.Raiser", {"Raise": grpc.unary_unary_rpc_method_handler(raise_it)}
    )
    server = grpc.aio.server(interceptors=[grpcutil.ServerInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def raised(addr: str, case: str) -> errors.InvoError:
    async with grpcutil.channel(addr) as ch:
        with pytest.raises(errors.InvoError) as caught:
            await grpcutil.call(ch.unary_unary("/test.Raiser/Raise"), case.encode(), timeout_s=5)
    return caught.value


async def test_a_dependency_that_timed_out_or_went_away_answers_unavailable_with_retry_after(
    raising_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    for case in DEPENDENCY_AWAY:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=grpcutil.log.name):
            exc = await raised(raising_server, case)
        assert type(exc) is errors.Unavailable, case
        assert (exc.error_code, exc.retry_after_s) == ("SERVICE_UNAVAILABLE", 1), case
        mine = [r for r in caplog.records if r.name == grpcutil.log.name and r.levelno >= logging.WARNING]
        # One warning line, no traceback: an outage must not fill the log with stacks.
        assert [(r.levelno, r.exc_info) for r in mine] == [(logging.WARNING, None)], case
        assert "a dependency timed out or went away" in mine[0].getMessage()


async def test_a_bug_still_answers_internal_with_its_traceback(
    raising_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    for case in BUGS:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=grpcutil.log.name):
            exc = await raised(raising_server, case)
        assert type(exc) is errors.Internal, case
        mine = [r for r in caplog.records if r.name == grpcutil.log.name and r.levelno >= logging.WARNING]
        assert [r.levelno for r in mine] == [logging.ERROR] and mine[0].exc_info is not None, case
