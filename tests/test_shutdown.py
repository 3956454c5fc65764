"""Every process stops within its grace period plus a hard bound, and exits non-zero when it had
to force the stop or a background task died (issue 11, finding 3).

Most tests run the small service program of tests/shutdown_support.py (the real `GrpcService`,
through `runtime.run` as every service's `main`, with no database) in one misbehaving mode each,
SIGTERM it and time its end; two run the real webhooks service beside the session network's,
once stopping cleanly and once with its database frozen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from devstack.stack import Stack
from services.common import db, grpcserver, runtime
from services.common.config import Settings
from services.webhooks.sender import Sender
from tests.helpers import eventually
from tests.shutdown_support import (
    PROGRAM_GRACE_S,
    FreezableProxy,
    OwnWebhooks,
    ServiceProcess,
    exited_within,
    program_process,
    remove_own_webhooks,
    start_own_webhooks,
    wait_until,
)

READY_S = 30.0
SLACK_S = 1.5  # a loaded test box: interpreter exit, log flushing, the poll's own interval
# The test program's graceful stop with no clean-up (GrpcService.stop_budget_s).
BUDGET_S = PROGRAM_GRACE_S + grpcserver.CLEANUP_S + grpcserver.BACKGROUND_STOP_S
WEBHOOKS_MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "services" / "webhooks" / "migrations"


@pytest.fixture
def program(tmp_path: pathlib.Path) -> Iterator[Callable[[str], ServiceProcess]]:
    """Starts the test program in a mode and waits until it serves (signals handled)."""
    started: list[ServiceProcess] = []

    def start(mode: str, *, ready: str = "listening on") -> ServiceProcess:
        proc, _ = program_process(mode, tmp_path / f"{mode}-{len(started)}.log")
        started.append(proc)
        assert wait_until(lambda: proc.logged(ready) or not proc.alive(), timeout_s=READY_S), proc.tail()
        assert proc.alive(), proc.tail()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


def stop_and_time(proc: ServiceProcess, *, bound_s: float) -> float:
    proc.terminate()
    assert wait_until(lambda: not proc.alive(), timeout_s=bound_s), f"alive {bound_s} s after SIGTERM:\n{proc.tail()}"
    return time.monotonic() - proc.signalled_at


def error_lines(proc: ServiceProcess) -> list[str]:
    return [str(e["msg"]) for e in proc.entries() if e.get("level") == "error"]


def test_a_clean_stop_exits_zero_within_the_grace_period(program: Callable[..., ServiceProcess]) -> None:
    proc = program("clean")
    took_s = stop_and_time(proc, bound_s=BUDGET_S + SLACK_S)
    assert proc.proc.returncode == 0, proc.tail()
    assert proc.logged("shutdown-test stopped")
    assert error_lines(proc) == []
    assert took_s < PROGRAM_GRACE_S + SLACK_S  # nothing waited out a bound


def test_a_loop_whose_round_swallowed_its_cancellation_stops_anyway(program: Callable[..., ServiceProcess]) -> None:
    """The hang of finding 3: a round that swallows the cancellation (3.11's wait_for can) used to
    keep its supervised loop, and with it the process, alive for ever."""
    proc = program("swallow")
    stop_and_time(proc, bound_s=BUDGET_S + SLACK_S)
    assert proc.proc.returncode == 0, proc.tail()
    assert error_lines(proc) == []


def test_a_task_that_ignores_cancellation_is_left_behind_and_the_exit_is_forced(
    program: Callable[..., ServiceProcess],
) -> None:
    proc = program("ignore")
    took_s = stop_and_time(proc, bound_s=BUDGET_S + runtime.HARD_STOP_S + SLACK_S)
    assert proc.proc.returncode == runtime.EXIT_FORCED, proc.tail()
    # Within its own bound (the tasks' wait), not the watchdog's: it knew it was stuck.
    assert grpcserver.BACKGROUND_STOP_S <= took_s < BUDGET_S + SLACK_S, took_s
    assert any("background tasks still alive" in line and "stubborn-task" in line for line in error_lines(proc))


def test_a_clean_up_that_never_ends_is_cut_short_and_the_exit_is_forced(
    program: Callable[..., ServiceProcess],
) -> None:
    proc = program("stuck-cleanup")
    took_s = stop_and_time(proc, bound_s=BUDGET_S + grpcserver.CLEANUP_S + runtime.HARD_STOP_S + SLACK_S)
    assert proc.proc.returncode == runtime.EXIT_FORCED, proc.tail()
    assert took_s < BUDGET_S + grpcserver.CLEANUP_S + SLACK_S, took_s
    assert any("_ignores_cancellation did not finish" in line for line in error_lines(proc)), proc.tail()


def test_a_blocked_event_loop_is_ended_by_the_watchdog_naming_the_tasks_alive(
    program: Callable[..., ServiceProcess],
) -> None:
    """The event loop never runs again, so nothing in it can stop the process: the watchdog
    thread, armed by the signal handler, ends it once the grace and the hard bound are over."""
    proc = program("block", ready="blocking the loop")
    took_s = stop_and_time(proc, bound_s=BUDGET_S + runtime.HARD_STOP_S + SLACK_S)
    assert proc.proc.returncode == runtime.EXIT_FORCED, proc.tail()
    assert took_s >= BUDGET_S + runtime.HARD_STOP_S - 0.1, took_s  # it had its whole grace
    (line,) = error_lines(proc)
    assert "did not stop in time (SIGTERM; bound" in line, line
    assert "blocking-task at block (shutdown_support.py:" in line, line
    assert "quiet-loop" in line, line  # every task alive is named


def test_a_second_signal_forces_the_exit_at_once(program: Callable[..., ServiceProcess]) -> None:
    proc = program("block", ready="blocking the loop")
    proc.terminate()
    # Signals that arrive together are handled once: the second is sent once the first was.
    assert wait_until(lambda: proc.logged("shutdown-test stopping (SIGTERM"), timeout_s=SLACK_S), proc.tail()
    assert proc.alive()
    proc.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: not proc.alive(), timeout_s=SLACK_S), proc.tail()
    assert proc.proc.returncode == runtime.EXIT_FORCED
    assert any("a second signal (SIGTERM) forces it" in line for line in error_lines(proc)), proc.tail()


def test_a_background_task_that_dies_ends_the_process_non_zero(program: Callable[..., ServiceProcess]) -> None:
    """Not 0: a supervisor must see that the service did not stop because it was asked to."""
    proc = program("die", ready="shutdown-test")
    assert wait_until(lambda: not proc.alive(), timeout_s=READY_S + BUDGET_S), proc.tail()
    assert proc.proc.returncode == runtime.EXIT_FAILED, proc.tail()
    assert any("background task dying-task died" in line for line in error_lines(proc)), proc.tail()


# -- the real webhooks service ------------------------------------------------------------------


@pytest.fixture
async def own_webhooks_factory(stack: Stack, tmp_path: pathlib.Path) -> AsyncIterator[Any]:
    made: list[OwnWebhooks] = []

    async def make(database_url: str = "") -> OwnWebhooks:
        own = await start_own_webhooks(stack, tmp_path / f"webhooks-{len(made)}.log", database_url=database_url)
        made.append(own)
        return own

    try:
        yield make
    finally:
        for own in made:
            await remove_own_webhooks(own)


async def test_the_webhooks_service_stops_cleanly_with_exit_zero(own_webhooks_factory: Any) -> None:
    own: OwnWebhooks = await own_webhooks_factory()
    own.process.terminate()
    took_s = await exited_within(own.process, own.stop_budget_s() + SLACK_S)
    assert own.process.proc.returncode == 0, own.process.tail()
    assert took_s < own.stop_budget_s(), took_s
    assert own.process.logged("webhooks stopped")


async def test_the_webhooks_service_stops_within_its_bound_while_its_database_is_frozen(
    stack: Stack, own_webhooks_factory: Any
) -> None:
    """SIGTERM while every query hangs (a frozen PostgreSQL): the process still ends within its
    stop budget plus the hard bound, and says with its exit code whether it had to cut the stop
    short."""
    host_port = stack.env["INVO_DATABASE_URL"].split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    proxy = FreezableProxy(host, int(port))
    await proxy.start()
    try:
        url = stack.env["INVO_DATABASE_URL"].replace(f"@{host_port}/", f"@127.0.0.1:{proxy.port}/")
        own: OwnWebhooks = await own_webhooks_factory(url)
        proxy.freeze()

        async def a_query_is_stuck() -> bool:  # the sender claims every 0.2 s when idle
            return proxy.held > 0

        await eventually(a_query_is_stuck, timeout_s=10)
        own.process.terminate()
        bound_s = own.stop_budget_s() + runtime.HARD_STOP_S + SLACK_S
        took_s = await exited_within(own.process, bound_s)
        code = own.process.proc.returncode
        assert code in (0, runtime.EXIT_FORCED), own.process.tail()
        if code == runtime.EXIT_FORCED:  # and then it says what it cut short
            assert any("did not finish" in line or "still alive" in line for line in error_lines(own.process))
        assert took_s < bound_s
    finally:
        await proxy.close()


class WatchedWake(asyncio.Event):
    """The sender's wake-up event, telling the test when the sender waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def wait(self) -> bool:  # type: ignore[override]  # the same, observed
        self.waiting.set()
        return await super().wait()


async def test_an_idle_sender_round_cancelled_as_it_is_woken_raises_the_cancellation(stack: Stack) -> None:
    """The sender's idle wait, where a stopping service's sender spends its time: a wake-up and
    the cancellation in the same step (a new delivery as SIGTERM arrives) must not be taken as a
    wake-up; the round raises CancelledError."""
    url = stack.env["INVO_DATABASE_URL"]
    schema = f"test_stop_{secrets.token_hex(4)}"
    migrations = db.service_migrations("webhooks", WEBHOOKS_MIGRATIONS, outbox=False)
    await db.migrate_url(url, schema, migrations)
    pool = await db.create_pool(url, schema, application_name="test-stop", max_size=2, statement_timeout_ms=5000)
    wake = WatchedWake()
    settings = dataclasses.replace(Settings.from_env({}), webhook_concurrency_max=4)
    sender = Sender(pool, settings, tenants=None, wake=wake)  # type: ignore[arg-type]  # nothing to sign
    try:
        for _ in range(20):  # the race each time, not once by luck
            wake.waiting.clear()
            task = asyncio.ensure_future(sender.send_round())
            await asyncio.wait_for(wake.waiting.wait(), 5)  # nothing due: it waits to be woken
            wake.set()
            task.cancel()
            await asyncio.wait({task}, timeout=5)
            assert task.cancelled(), f"the round answered {task.result()!r} instead of being cancelled"
    finally:
        await sender.close()
        await pool.close()
        await db.drop_schema(url, schema)
