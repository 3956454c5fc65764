"""What every service process does once it has started, and how it stops.

Stopping is bounded. `stop_signals` makes SIGTERM and SIGINT set the process's stop event and
arm a watchdog: a daemon thread (so it fires even when the event loop is stuck or blocked) that,
`grace_s + HARD_STOP_S` after the first signal, logs one error line naming the tasks still alive
and ends the process with `os._exit(EXIT_FORCED)`. A second signal forces the exit at once. A
process that stops in time exits with `exit_code()`: 0, or `EXIT_FAILED` when something recorded
a failure with `fail()` (a background task that died), or `EXIT_FORCED` when part of the stop had
to be cut short. So a supervisor (`make run`, Kubernetes) sees every unclean end as non-zero.

Why a thread and `signal.signal` rather than `loop.add_signal_handler` alone: the loop's handler
runs only when the loop gets round to it, so a loop blocked in synchronous code would never arm
the watchdog. A Python-level handler runs in the main thread between bytecodes whatever the loop
is doing; it only flags the watchdog (which is already running) and hands `stop.set` to the loop
with `call_soon_threadsafe`, both safe from a signal handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import select
import signal
import threading
import time
import types
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("invo.runtime")

HARD_STOP_S = 5.0  # how long past its grace period a stopping process may take before it is ended
EXIT_FAILED = 1  # a background task died (or something else called `fail`)
EXIT_FORCED = 124  # the stop was cut short (as timeout(1) exits when its command timed out)
LOG_FLUSH_S = 1.0  # the last line before a forced exit may take this long, never longer
TASKS_NAMED_MAX = 20  # the forced-exit line names at most this many tasks
AWAIT_DEPTH_MAX = 64  # how far down a task's chain of awaits the forced-exit line looks


def freeze_startup_heap() -> None:
    """Takes everything allocated at start-up (modules, generated protobuf classes, pools, caches:
    hundreds of thousands of objects) out of the garbage collector's full collections, which
    otherwise walk them all again and again. Measured under the spread-purchase bench: the
    ledger's full collections took 18-30 ms every 3-4 s, each one stalling every request in flight
    and making most of the p99. Call it once serving starts; objects made later are collected as
    usual."""
    gc.collect()
    gc.freeze()


# -- the exit code -------------------------------------------------------------------------------

_failures: list[str] = []
_forced: list[str] = []


def fail(reason: str, *, forced: bool = False) -> None:
    """Records that the process must exit non-zero: `EXIT_FORCED` when `forced` (part of its stop
    was cut short), else `EXIT_FAILED`. It stops nothing by itself."""
    (_forced if forced else _failures).append(reason)


def exit_code() -> int:
    """What the process should exit with, given what was recorded with `fail`."""
    if _forced:
        return EXIT_FORCED
    return EXIT_FAILED if _failures else 0


def exit_now(code: int) -> None:
    """Ends the process at once with `code` after flushing the log (bounded): for a stop that had
    to leave tasks behind, which `asyncio.run`'s own clean-up would wait on for ever."""
    _flush_logs()
    os._exit(code)


def run(main: Awaitable[None]) -> int:
    """Runs a process's main coroutine (`asyncio.run`) and answers its exit code. When the stop was
    forced, the process ends here with `EXIT_FORCED`: the tasks it left behind are not waited on."""

    async def until_done() -> None:
        await main
        if _forced:
            exit_now(EXIT_FORCED)

    asyncio.run(until_done())
    return exit_code()


# -- the watchdog --------------------------------------------------------------------------------


class _Watchdog:
    """One per process: a daemon thread that waits to be armed, then for its deadline, then ends
    the process. Started before any signal can arm it, and armed through a pipe: a signal handler
    may have interrupted the main thread anywhere (inside `threading`, or holding a lock it would
    need), and a float store plus `os.write` take no lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # `start` only, never taken in a signal handler
        self._deadline = math.inf
        self._reason = ""
        self._name = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: tuple[int, int] | None = None

    def start(self, *, name: str, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._name, self._loop = name, loop
            if self._wake is None:
                self._wake = os.pipe()
                os.set_blocking(self._wake[1], False)  # an arm never blocks, even with the pipe full
                threading.Thread(target=self._watch, name=f"{name}-stop-watchdog", daemon=True).start()

    def arm(self, after_s: float, reason: str) -> None:
        """The process ends `after_s` from now unless it has ended by then; the earliest deadline
        armed wins. Safe in a signal handler once `start` has run."""
        deadline = time.monotonic() + after_s
        if deadline < self._deadline:
            self._deadline, self._reason = deadline, reason
        if self._wake is not None:
            with contextlib.suppress(BlockingIOError):  # full: the thread is awake already
                os.write(self._wake[1], b"\0")

    def _watch(self) -> None:
        if self._wake is None:
            raise RuntimeError("the watchdog runs only once started")
        wake = self._wake[0]
        announced = False
        # Until the deadline, woken early by every arm (a second signal arms one for now).
        while (left_s := self._deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([wake], [], [], None if left_s == math.inf else left_s)
            if readable:
                os.read(wake, 4096)
            if not announced and self._deadline < math.inf:
                # From this thread, not the signal handler: one line saying the stop has begun
                # and when it will be forced (and, for a test, that the signal was handled).
                announced = True
                _log_bounded(
                    logging.INFO,
                    "%s stopping (%s); forced exit in %.1f s unless it ends first",
                    self._name,
                    self._reason,
                    max(0.0, self._deadline - time.monotonic()),
                )
        force(self._reason, name=self._name, loop=self._loop)


_watchdog = _Watchdog()


def describe_tasks(loop: asyncio.AbstractEventLoop | None) -> list[str]:
    """The tasks of `loop` still alive, each as `name (cancelling) at file:line` where the line is
    the innermost await it is suspended in. Safe from another thread: it only reads."""
    if loop is None:
        return []
    try:
        tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    except RuntimeError:  # the set changed under us too often: name none rather than fail
        return ["(the tasks could not be listed)"]
    found = []
    for task in tasks[:TASKS_NAMED_MAX]:
        state = " (cancelling)" if task.cancelling() else ""
        found.append(f"{task.get_name()}{state} at {_where(task.get_coro())}")
    if len(tasks) > TASKS_NAMED_MAX:
        found.append(f"and {len(tasks) - TASKS_NAMED_MAX} more")
    return found


def _where(coro: Any) -> str:
    """Where a coroutine is suspended: down its chain of awaits to the innermost coroutine."""
    where = "?"
    for _ in range(AWAIT_DEPTH_MAX):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if not isinstance(frame, types.FrameType):
            break
        where = f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno})"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return where


def force(reason: str, *, name: str, loop: asyncio.AbstractEventLoop | None) -> None:
    """Logs one error line naming the tasks still alive, then ends the process with `EXIT_FORCED`."""
    try:
        alive = describe_tasks(loop)
    except Exception as exc:  # the line must not stop the exit
        alive = [f"(the tasks could not be described: {type(exc).__name__})"]
    _log_bounded(
        logging.ERROR,
        "%s did not stop in time (%s); forcing exit %d; tasks still alive: %s",
        name,
        reason,
        EXIT_FORCED,
        "; ".join(alive) or "none",
    )
    exit_now(EXIT_FORCED)


def _log_bounded(level: int, msg: str, *args: object) -> None:
    """One log line from a helper thread, waited on at most `LOG_FLUSH_S`: a main thread stuck
    while holding the log handler's lock (a full pipe, say) must not stop the exit too."""
    writer = threading.Thread(target=log.log, args=(level, msg, *args), daemon=True)
    writer.start()
    writer.join(LOG_FLUSH_S)


def _flush_logs() -> None:
    def flush() -> None:
        for handler in logging.getLogger().handlers:
            handler.flush()

    writer = threading.Thread(target=flush, daemon=True)
    writer.start()
    writer.join(LOG_FLUSH_S)


def stop_within(grace_s: float, *, name: str) -> None:
    """Arms the watchdog: unless the process has ended `grace_s + HARD_STOP_S` from now, it is
    ended with `EXIT_FORCED`. For a stop that did not come from a signal (a background task that
    died); call it from the event loop's thread."""
    _check_grace(grace_s)
    _watchdog.start(name=name, loop=asyncio.get_running_loop())
    _watchdog.arm(grace_s + HARD_STOP_S, f"stop begun; bound {grace_s + HARD_STOP_S:.1f} s")


def stop_signals(stop: asyncio.Event, *, name: str, grace_s: float) -> None:
    """SIGTERM and SIGINT set `stop` (on the running loop) and arm the watchdog for
    `grace_s + HARD_STOP_S`; a second signal ends the process at once with `EXIT_FORCED`.
    Call it from the main thread, inside the running loop, once the process serves."""
    _check_grace(grace_s)
    loop = asyncio.get_running_loop()
    _watchdog.start(name=name, loop=loop)
    signalled: list[int] = []

    def on_signal(signum: int, _frame: types.FrameType | None) -> None:
        if signalled:
            # Through the watchdog's thread, which logs and exits: no thread is started and no
            # lock taken here, in a handler that may have interrupted anything.
            _watchdog.arm(0.0, f"a second signal ({signal.Signals(signum).name}) forces it")
            return
        signalled.append(signum)
        _watchdog.arm(grace_s + HARD_STOP_S, f"{signal.Signals(signum).name}; bound {grace_s + HARD_STOP_S:.1f} s")
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the loop is closed: the process is ending anyway, and armed
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def _check_grace(grace_s: float) -> None:
    if not 0 <= grace_s < math.inf:
        raise ValueError(f"grace_s must be finite and >= 0, got {grace_s!r}")
