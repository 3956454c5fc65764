"""Supervised background loops: a round that fails is logged and retried, never the end of the task.

Every service runs loops in the background (the outbox relay, the webhooks consumer and sender,
hold expiry, order recovery). A dependency that goes away for a while (PostgreSQL, NATS, another
gRPC service) makes rounds fail; it must not end the task, because `GrpcService.background`
treats a task that ends as a dead service. So a loop is written as one *round* and handed to
`supervised`, which runs it for ever:

    async def expire_round() -> float | None:
        voided = await expire_holds(EXPIRY_BATCH)
        return 0.0 if voided == EXPIRY_BATCH else None  # a full batch: go again at once

    svc.background(
        loops.supervised("hold-expiry", expire_round, interval_s=EXPIRY_INTERVAL_S, log=log),
        "hold-expiry",
    )

- A round returns how long to wait before the next one, in seconds, or None for `interval_s`.
  A round that waits on something itself (an event, a fetch with a timeout) returns 0.
- A round that raises any `Exception` is logged as one warning line (the exception's type and
  message; the traceback only on the first failure of a run of failures, so a long outage does
  not fill the log with stacks) and the next round waits a capped exponential backoff:
  `backoff_min_s`, doubling per consecutive failure up to `backoff_max_s`, less up to 20 %
  jitter so that many processes that failed together do not retry together. The first round that
  succeeds again logs the recovery and resets the backoff.
- `asyncio.CancelledError` (a `BaseException`) is never caught: cancelling the task stops it at
  once, whether it is in a round or waiting between rounds. A round that swallowed the
  cancellation does not keep the loop alive either: after every round, whatever its outcome, a
  task with a cancellation pending (`Task.cancelling()`) raises `CancelledError`. Python 3.11's
  `asyncio.wait_for` drops a cancellation that arrives as its inner future finishes (nats-py's
  `fetch`/`next_msg` use it), and nats-py turns one into `ConnectionClosedError` once the
  connection is closed: without this check a stopping service's loop went on for ever.

A round must leave things consistent when it raises (a claim it cannot finish hands its work
back or lets its lease run out): the next round starts from the state on record, not from
whatever the failed round held.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import NoReturn

from services.common import logs

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
JITTER_FRACTION = 0.2  # a wait is shortened by up to this fraction of itself, never lengthened
MESSAGE_MAX = 300  # an exception's message in the log, at most (some carry a whole SQL statement)

Round = Callable[[], Awaitable[float | None]]
Sleep = Callable[[float], Awaitable[None]]


def backoff_s(
    failures: int, *, backoff_min_s: float, backoff_max_s: float, rng: Callable[[], float] = random.random
) -> float:
    """The wait after `failures` consecutive failed rounds (1 for the first): doubling from
    `backoff_min_s`, capped at `backoff_max_s`, with jitter that only shortens it."""
    if failures < 1:
        raise ValueError("backoff_s is for one failure or more")
    # The exponent is bounded so that a long outage cannot overflow the float.
    base = min(backoff_max_s, backoff_min_s * 2.0 ** min(failures - 1, 60))
    return base * (1.0 - JITTER_FRACTION * rng())


async def supervised(
    name: str,
    round_fn: Round,
    *,
    interval_s: float,
    log: logging.Logger,
    backoff_min_s: float = BACKOFF_MIN_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    sleep: Sleep = asyncio.sleep,
) -> NoReturn:
    """Runs `round_fn` for ever (see the module docstring); ends only when cancelled.

    `name` names the loop in its log lines (field `loop`). `sleep` is for tests, which pass one
    that records the waits instead of taking them."""
    if interval_s < 0 or not 0 < backoff_min_s <= backoff_max_s:
        raise ValueError("supervised needs interval_s >= 0 and 0 < backoff_min_s <= backoff_max_s")
    failures = 0
    while True:
        try:
            wait_s = await round_fn()
        except Exception as exc:  # any failure of one round; CancelledError is not an Exception
            _stop_if_cancelled(name)  # the "failure" may be a cancellation turned into an error
            failures += 1
            wait_s = backoff_s(failures, backoff_min_s=backoff_min_s, backoff_max_s=backoff_max_s)
            message = str(exc)[:MESSAGE_MAX]
            log.warning(
                "%s round failed (%s: %s); failure %d in a row, next round in %.1f s",
                name,
                type(exc).__name__,
                message,
                failures,
                wait_s,
                exc_info=exc if failures == 1 else None,
                extra=logs.fields(loop=name, failures=failures, error_type=type(exc).__name__),
            )
        else:
            _stop_if_cancelled(name)
            if failures:
                log.info(
                    "%s recovered after %d failed rounds",
                    name,
                    failures,
                    extra=logs.fields(loop=name, recovered_after=failures),
                )
                failures = 0
            if wait_s is None:
                wait_s = interval_s
        if wait_s > 0:
            await sleep(wait_s)
        else:
            # Even a loop that goes again at once lets the other tasks run between rounds.
            await asyncio.sleep(0)


def _stop_if_cancelled(name: str) -> None:
    """Raises `CancelledError` when the current task was cancelled and the round swallowed it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError(f"{name}: cancelled during a round that swallowed the cancellation")
