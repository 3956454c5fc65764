"""A service's gRPC server and its bounded stop (the interceptor and the channel options are
grpcutil's).

SIGTERM/SIGINT (`runtime.stop_signals`): health goes NOT_SERVING, in-flight calls get a grace
period, then background tasks are cancelled and resources closed, each step bounded; a stop that
overruns its bounds is forced (`runtime.EXIT_FORCED`), and a background task that dies stops the
service with `runtime.EXIT_FAILED`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import grpcutil, runtime

log = logging.getLogger("invo.grpc")

Cleanup = Callable[[], Awaitable[None]]

BACKGROUND_STOP_S = 2.0  # how long cancelled background tasks may take to end
CLEANUP_S = 1.0  # how long each shutdown clean-up (closing a pool, a connection: milliseconds) may take


async def finish_within(aw: Awaitable[Any], timeout_s: float) -> bool:
    """Awaits `aw` for at most `timeout_s`; False (and `aw` cancelled, not waited on) if it did
    not finish. Not `asyncio.wait_for`, which waits for the cancelled work to end: work that
    swallows its cancellation would hold the stop for ever. An exception of `aw` is raised."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        return False
    task.result()
    return True


async def end_tasks(tasks: Collection[asyncio.Task[Any]], timeout_s: float) -> list[asyncio.Task[Any]]:
    """Cancels `tasks` and waits at most `timeout_s` for them to end; the tasks still alive."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    return sorted(pending, key=lambda t: t.get_name())


class GrpcService:
    """Runs one service's gRPC server until SIGTERM or SIGINT (or a background task's death).

    The stop is bounded: the server's grace, then `BACKGROUND_STOP_S` for the cancelled background
    tasks, then `CLEANUP_S` for each clean-up; what overruns its bound is left behind, logged and
    recorded as a forced stop (`runtime.fail(forced=True)`), and the watchdog of
    `runtime.stop_signals` ends the process `runtime.HARD_STOP_S` after all of that whatever
    happens."""

    def __init__(self, name: str, listen_addr: str, *, shutdown_grace_s: float) -> None:
        self.name = name
        self.listen_addr = listen_addr
        self.shutdown_grace_s = shutdown_grace_s
        self.server = grpc.aio.server(interceptors=[grpcutil.ServerInterceptor()], options=grpcutil.CHANNEL_OPTIONS)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._cleanups: list[Cleanup] = []
        self._stop = asyncio.Event()
        self.serving = asyncio.Event()  # set once it serves and the signals are handled

    def add(self, adder: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        """Register a servicer: `add(pb2_grpc.add_XServicer_to_server, impl, "invo.v1.X")`."""
        adder(servicer, self.server)
        self._service_names.append(full_name)

    def background(self, coro: Awaitable[Any], name: str) -> None:
        """A task that runs for the server's life and is cancelled at shutdown."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._on_background_done)
        self._tasks.append(task)

    def _on_background_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if self._stop.is_set():
            if exc is not None:  # ended while stopping: worth a line, not a failure
                log.warning("background task %s ended with an error while stopping", task.get_name(), exc_info=exc)
            return
        # A background loop must never die quietly: take the service down, non-zero, so that it
        # is restarted. A loop that returns has died too (every one runs until cancelled).
        how = "died" if exc is not None else "ended"
        log.error("background task %s %s", task.get_name(), how, exc_info=exc)
        runtime.fail(f"background task {task.get_name()} {how}")
        self._stop.set()

    def on_shutdown(self, cleanup: Cleanup) -> None:
        self._cleanups.append(cleanup)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_budget_s(self) -> float:
        """The longest a graceful stop takes: the server's grace, the tasks' bound, each clean-up's."""
        return self.shutdown_grace_s + CLEANUP_S + BACKGROUND_STOP_S + CLEANUP_S * len(self._cleanups)

    async def run(self) -> None:
        names: Sequence[str] = (
            *self._service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        port = self.server.add_insecure_port(self.listen_addr)
        if port == 0:
            raise OSError(f"{self.name}: cannot listen on {self.listen_addr}")
        await self.server.start()
        for name in self._service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        runtime.stop_signals(self._stop, name=self.name, grace_s=self.stop_budget_s)
        log.info("%s listening on %s", self.name, self.listen_addr)
        self.serving.set()
        try:
            await self._stop.wait()
        finally:
            # However the stop came (a signal, a task that died), the watchdog bounds it.
            runtime.stop_within(self.stop_budget_s, name=self.name)
            await self._shut_down()

    async def _shut_down(self) -> None:
        log.info("%s shutting down", self.name)
        await self.health.enter_graceful_shutdown()
        await self._bounded(self.server.stop(self.shutdown_grace_s), self.shutdown_grace_s + CLEANUP_S, "server.stop")
        stuck = await end_tasks(self._tasks, BACKGROUND_STOP_S)
        if stuck:
            names = ", ".join(t.get_name() for t in stuck)
            log.error("%s: background tasks still alive %.1f s after cancel: %s", self.name, BACKGROUND_STOP_S, names)
            runtime.fail(f"background tasks did not stop: {names}", forced=True)
        for cleanup in reversed(self._cleanups):
            await self._bounded(cleanup(), CLEANUP_S, getattr(cleanup, "__qualname__", repr(cleanup)))
        log.info("%s stopped", self.name)

    async def _bounded(self, aw: Awaitable[Any], timeout_s: float, what: str) -> None:
        try:
            finished = await finish_within(aw, timeout_s)
        except Exception:  # one clean-up that fails must not keep the others from running
            log.warning("%s: %s failed while stopping", self.name, what, exc_info=True)
            return
        if not finished:
            log.error("%s: %s did not finish within %.1f s; left behind", self.name, what, timeout_s)
            runtime.fail(f"{what} did not finish", forced=True)
