"""Supervised background loops (services/common/loops.py), in pure asyncio: no servers.

The waits between rounds go through a fake `sleep` that records them and returns at once (or
parks the loop when the test has seen enough), so the tests wait on events, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from services.common import loops

log = logging.getLogger("test.loops")
BOUND_S = 2.0  # every wait on a condition here is bounded by this


class Clock:
    """Records each wait the loop asks for; after `park_after` waits it parks the loop for ever
    (until cancelled) and sets `parked`."""

    def __init__(self, park_after: int) -> None:
        self.waits: list[float] = []
        self.park_after = park_after
        self.parked = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) >= self.park_after:
            self.parked.set()
            await asyncio.Event().wait()


class Boom(RuntimeError):
    pass


def script(outcomes: list[float | Exception | None]) -> tuple[loops.Round, list[int]]:
    """A round that answers (or raises) each outcome in turn, then keeps answering None."""
    calls = [0]

    async def round_fn() -> float | None:
        calls[0] += 1
        if calls[0] > len(outcomes):
            return None
        outcome = outcomes[calls[0] - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return round_fn, calls


@contextlib.asynccontextmanager
async def running(round_fn: loops.Round, clock: Clock, **kw: float) -> AsyncIterator[asyncio.Task[None]]:
    """The supervised loop as a task for the block; cancelled after it, which must end it."""
    options: dict[str, float] = {"interval_s": 1.0, **kw}
    task: asyncio.Task[None] = asyncio.ensure_future(
        loops.supervised("test-loop", round_fn, log=log, sleep=clock.sleep, **options)
    )
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND_S)


def within_jitter(wait: float, base: float) -> bool:
    return base * (1 - loops.JITTER_FRACTION) - 1e-9 <= wait <= base + 1e-9


async def test_a_round_that_fails_three_times_then_succeeds_backs_off_logs_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    round_fn, calls = script([Boom("db away"), Boom("db away"), TimeoutError("slow"), 0.25])
    clock = Clock(park_after=5)
    with caplog.at_level(logging.INFO, logger=log.name):
        async with running(round_fn, clock, interval_s=7.0, backoff_min_s=0.5, backoff_max_s=30.0):
            await asyncio.wait_for(clock.parked.wait(), BOUND_S)
    assert calls[0] == 5
    # Three backoffs (0.5, 1, 2 less jitter), then what the round asked for, then the interval.
    assert [within_jitter(w, b) for w, b in zip(clock.waits[:3], [0.5, 1.0, 2.0], strict=True)] == [True] * 3
    assert clock.waits[3:] == [0.25, 7.0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(";")[0] for r in warnings] == [
        "test-loop round failed (Boom: db away)",
        "test-loop round failed (Boom: db away)",
        "test-loop round failed (TimeoutError: slow)",
    ]
    # The traceback once, on the first failure of the run; the repeats are one line each.
    assert [r.exc_info is not None for r in warnings] == [True, False, False]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["test-loop recovered after 3 failed rounds"]


async def test_the_backoff_doubles_and_is_capped() -> None:
    round_fn, calls = script([Boom(f"down {i}") for i in range(40)])
    clock = Clock(park_after=12)
    async with running(round_fn, clock, backoff_min_s=0.5, backoff_max_s=8.0):
        await asyncio.wait_for(clock.parked.wait(), BOUND_S)
    bases = [0.5, 1.0, 2.0, 4.0] + [8.0] * 8
    assert [within_jitter(w, b) for w, b in zip(clock.waits, bases, strict=True)] == [True] * 12
    assert max(clock.waits) <= 8.0
    assert calls[0] == 12


def test_the_backoff_formula_at_its_edges() -> None:
    def at(failures: int, rng: Callable[[], float]) -> float:
        return loops.backoff_s(failures, backoff_min_s=0.5, backoff_max_s=30.0, rng=rng)

    assert [at(n, lambda: 0.0) for n in (1, 2, 3, 6, 7, 10_000)] == [0.5, 1.0, 2.0, 16.0, 30.0, 30.0]
    assert at(7, lambda: 1.0) == pytest.approx(30.0 * (1 - loops.JITTER_FRACTION))
    with pytest.raises(ValueError):
        at(0, lambda: 0.0)


async def test_a_success_resets_the_backoff() -> None:
    round_fn, _ = script([Boom("a"), Boom("b"), Boom("c"), None, Boom("d")])
    clock = Clock(park_after=5)
    async with running(round_fn, clock, interval_s=3.0, backoff_min_s=1.0, backoff_max_s=30.0):
        await asyncio.wait_for(clock.parked.wait(), BOUND_S)
    assert clock.waits[3] == 3.0
    assert within_jitter(clock.waits[4], 1.0), clock.waits  # back to the first step, not the fourth


async def test_a_round_that_answers_zero_goes_again_without_sleeping() -> None:
    round_fn, calls = script([0.0, 0.0, 0.0, 2.0])
    clock = Clock(park_after=1)
    async with running(round_fn, clock):
        await asyncio.wait_for(clock.parked.wait(), BOUND_S)
    assert calls[0] == 4 and clock.waits == [2.0]


async def test_cancellation_stops_it_promptly_while_it_waits_out_a_long_backoff() -> None:
    failed = asyncio.Event()

    async def round_fn() -> float | None:
        failed.set()
        raise Boom("down")

    # The real asyncio.sleep, and a backoff of an hour: only cancellation can end the wait.
    task = asyncio.ensure_future(
        loops.supervised("test-loop", round_fn, interval_s=1.0, log=log, backoff_min_s=3600.0, backoff_max_s=3600.0)
    )
    await asyncio.wait_for(failed.wait(), BOUND_S)
    await asyncio.sleep(0)  # let it reach its wait (a yield, not a timed wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND_S)


async def test_cancellation_stops_it_promptly_in_the_middle_of_a_round() -> None:
    started = asyncio.Event()
    cleaned_up = asyncio.Event()

    async def round_fn() -> float | None:
        started.set()
        try:
            await asyncio.Event().wait()  # a query that never answers
        finally:
            cleaned_up.set()
        return None

    task = asyncio.ensure_future(loops.supervised("test-loop", round_fn, interval_s=1.0, log=log))
    await asyncio.wait_for(started.wait(), BOUND_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND_S)
    assert cleaned_up.is_set()  # the cancellation reached the round, not swallowed as a failure


async def test_bad_options_are_refused() -> None:
    round_fn, calls = script([])
    for interval_s, backoff_min_s, backoff_max_s in ((-1.0, 0.5, 30.0), (1.0, 0.0, 30.0), (1.0, 5.0, 1.0)):
        with pytest.raises(ValueError):
            await loops.supervised(
                "test-loop",
                round_fn,
                interval_s=interval_s,
                log=log,
                backoff_min_s=backoff_min_s,
                backoff_max_s=backoff_max_s,
            )
    assert calls[0] == 0


# -- a round that swallowed its cancellation (issue 11, finding 3) -----------------------------


async def ended_by_cancellation(task: asyncio.Task[None]) -> bool:
    """Cancels the loop's task once; whether it ended, cancelled, within BOUND_S. Not
    `asyncio.wait_for(task)`, which on its timeout cancels again and waits for the end that a
    loop that never notices its cancellation never reaches."""
    task.cancel()
    await asyncio.wait({task}, timeout=BOUND_S)
    return task.done() and task.cancelled()


async def test_a_round_whose_wait_for_swallowed_the_cancellation_still_ends_the_loop() -> None:
    """The real race: the cancellation arrives as `wait_for`'s inner future completes, and 3.11's
    `wait_for` answers the result instead of raising. The loop must notice after the round."""
    futures: list[asyncio.Future[int]] = []
    waiting = asyncio.Event()

    async def round_fn() -> float | None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        futures.append(fut)
        waiting.set()
        await asyncio.wait_for(fut, timeout=3600)
        return 3600.0  # a long wait next: only a cancellation noticed now ends it promptly

    task = asyncio.ensure_future(loops.supervised("test-loop", round_fn, interval_s=1.0, log=log))
    try:
        await asyncio.wait_for(waiting.wait(), BOUND_S)
        futures[0].set_result(1)  # the inner future completes...
        assert await ended_by_cancellation(task)  # ...in the same step as the cancellation
        assert len(futures) == 1  # no round after the cancelled one
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_round_that_swallows_the_cancellation_and_answers_does_not_keep_the_loop_alive() -> None:
    swallowing = [True]  # turned off at the end, so that the old behaviour can be cleaned up
    rounds = [0]

    async def round_fn() -> float | None:
        rounds[0] += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not swallowing[0]:
                raise
        return 0.0  # go again at once: a loop that missed its cancellation spins straight back in

    task = asyncio.ensure_future(loops.supervised("test-loop", round_fn, interval_s=1.0, log=log))
    try:
        await asyncio.sleep(0)  # the first round reaches its wait (a yield, not a timed wait)
        assert await ended_by_cancellation(task)
        assert rounds[0] == 1
    finally:
        swallowing[0] = False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_cancellation_turned_into_an_error_is_not_counted_as_a_failed_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """nats-py's `next_msg` raises ConnectionClosedError instead of CancelledError once its
    connection is closed: the loop stops, it does not back off and go again."""
    converting = [True]

    async def round_fn() -> float | None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if converting[0]:
                raise ConnectionError("nats: connection closed") from None
            raise
        return None

    task = asyncio.ensure_future(
        loops.supervised("test-loop", round_fn, interval_s=1.0, log=log, backoff_min_s=0.01, backoff_max_s=0.01)
    )
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            await asyncio.sleep(0)
            assert await ended_by_cancellation(task)
        assert [r for r in caplog.records if "round failed" in r.getMessage()] == []
    finally:
        converting[0] = False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
