"""The faults, one per phase: what is done to the network while the load runs, and how it heals.

- `Kill(name)`: SIGKILL one process (a service, the gateway, the card processor's or the ACH
  provider's simulator) and start it again (`Stack.restart`): a crash mid-request, then recovery
  from what is on record.
- `KillNats`: SIGKILL nats-server and start it again on its port, its store kept.
- `FreezePostgres(hold_s)`: SIGSTOP the postmaster and every child (found through /proc) for
  `hold_s`, then SIGCONT: a database that stalls without closing anything.
- `CutPostgres(service)` / `CutNats(service)`: before the load, the one service is pointed at a
  TCP proxy in front of the server (`Stack.set_process_env`, then a restart); the fault resets
  every connection through it and refuses new ones for a while; afterwards the service is
  pointed back at the server.

Blocking work (restarts wait until the process serves) runs on `SPAWNER`, one long-lived thread:
a server started from a thread gets PR_SET_PDEATHSIG for that thread's exit, so it must not be a
pool thread that goes away when an event loop closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from devstack import devservers
from devstack.stack import Stack
from faults.proxy import TcpProxy
from services.common.config import SERVICES

T = TypeVar("T")
SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="faults-spawner")
FREEZE_S = 10.0
CUT_HOLD_S = 5.0
NATS_RESTART_ATTEMPTS_MAX = 5  # its port may be held for a moment by the killed server's sockets


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(SPAWNER, lambda: fn(*args, **kwargs))


@dataclasses.dataclass
class Times:
    injected_at: float = 0.0  # time.monotonic()
    healed_at: float = 0.0
    detail: str = ""


class Fault(Protocol):
    name: str

    async def prepare(self, stack: Stack) -> None: ...

    async def inject(self, stack: Stack) -> Times: ...

    async def restore(self, stack: Stack) -> None: ...


class Kill:
    def __init__(self, process: str) -> None:
        self.process = process
        self.name = f"kill-{process}"

    async def prepare(self, stack: Stack) -> None:
        if self.process not in stack.procs:
            raise RuntimeError(f"no process {self.process} in this network")

    async def inject(self, stack: Stack) -> Times:
        t = Times(injected_at=time.monotonic())
        old = stack.procs[self.process].pid
        await blocking(stack.restart, self.process, sig=signal.SIGKILL)
        t.healed_at = time.monotonic()
        t.detail = f"pid {old} killed, {stack.procs[self.process].pid} serving"
        return t

    async def restore(self, stack: Stack) -> None:
        return None


class KillNats:
    name = "kill-nats"

    async def prepare(self, stack: Stack) -> None:
        if stack.nats is None or stack.nats.proc is None:
            raise RuntimeError("this network uses an external NATS (INVO_NATS_URL): it cannot be killed")

    async def inject(self, stack: Stack) -> Times:
        t = Times(injected_at=time.monotonic())
        # Killed and started again in one call on SPAWNER, the thread that also runs the
        # supervisor's rounds: no round can see it dead and restart it too.
        t.detail = await blocking(self._kill_and_restart, stack)
        t.healed_at = time.monotonic()
        return t

    @staticmethod
    def _kill_and_restart(stack: Stack) -> str:
        nats = stack.nats
        if nats is None or nats.proc is None:
            raise RuntimeError("NATS is not ours")
        nats.proc.kill()
        nats.proc.wait(10)
        for attempt in range(1, NATS_RESTART_ATTEMPTS_MAX + 1):
            try:
                stack.restart_server("nats")
                return f"nats-server restarted on port {nats.port}"
            except Exception:
                if attempt == NATS_RESTART_ATTEMPTS_MAX:
                    raise
                time.sleep(0.5 * attempt)  # the killed server's listening socket may linger a moment
        raise RuntimeError("unreachable")

    async def restore(self, stack: Stack) -> None:
        return None


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    out: dict[int, list[int]] = {}
    for pid, fields in devservers.proc_stats():
        out.setdefault(int(fields[1]), []).append(pid)
    return out


def process_tree(root: int) -> list[int]:
    tree = _children()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


class FreezePostgres:
    def __init__(self, hold_s: float = FREEZE_S) -> None:
        self.hold_s = hold_s
        self.name = "freeze-postgres"

    async def prepare(self, stack: Stack) -> None:
        if stack.postgres is None or stack.postgres.proc is None:
            raise RuntimeError("this network uses an external PostgreSQL (INVO_DATABASE_URL): it cannot be frozen")

    async def inject(self, stack: Stack) -> Times:
        pg = stack.postgres
        if pg is None or pg.proc is None:
            raise RuntimeError("PostgreSQL is not ours")
        t = Times(injected_at=time.monotonic())
        stopped: list[int] = []
        try:
            # The postmaster first, so it forks nothing new; then its children, looked up twice
            # so that one forked while we looked is caught too.
            for _ in range(2):
                for pid in process_tree(pg.proc.pid):
                    if pid not in stopped:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGSTOP)
                            stopped.append(pid)
            await asyncio.sleep(self.hold_s)  # the fault itself: a stall of this long
        finally:
            for pid in reversed(stopped):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        t.healed_at = time.monotonic()
        t.detail = f"{len(stopped)} PostgreSQL processes stopped for {self.hold_s:g} s"
        return t

    async def restore(self, stack: Stack) -> None:
        return None


class _Cut:
    """A proxy between one service and a server; `inject` cuts every connection through it."""

    variable = ""
    server = ""

    def __init__(self, service: str, hold_s: float = CUT_HOLD_S) -> None:
        if service not in SERVICES:
            raise ValueError(f"no service {service!r}; one of {', '.join(SERVICES)}")
        self.service = service
        self.hold_s = hold_s
        self.name = f"cut-{self.server}:{service}"
        self.proxy: TcpProxy | None = None

    async def prepare(self, stack: Stack) -> None:
        url = urllib.parse.urlsplit(stack.env[self.variable])
        host, port = url.hostname or "127.0.0.1", url.port
        if port is None:
            raise RuntimeError(f"{self.variable} names no port")
        self.proxy = TcpProxy(host, port)
        proxy_port = await self.proxy.start()
        netloc = url.netloc.rpartition("@")
        proxied = url._replace(netloc=f"{netloc[0]}{netloc[1]}127.0.0.1:{proxy_port}")
        stack.set_process_env(self.service, {self.variable: urllib.parse.urlunsplit(proxied)})
        await blocking(stack.restart, self.service)

    async def inject(self, stack: Stack) -> Times:
        if self.proxy is None:
            raise RuntimeError("prepare() first")
        t = Times(injected_at=time.monotonic())
        cut = self.proxy.cut(self.hold_s)
        await asyncio.sleep(self.hold_s)  # the fault itself: every connection refused this long
        t.healed_at = time.monotonic()
        t.detail = f"{cut} connections reset, new ones refused for {self.hold_s:g} s"
        return t

    async def restore(self, stack: Stack) -> None:
        stack.set_process_env(self.service, {})
        try:
            await blocking(stack.restart, self.service)
        finally:
            if self.proxy is not None:
                await self.proxy.stop()
                self.proxy = None


class CutPostgres(_Cut):
    variable = "INVO_DATABASE_URL"
    server = "postgres"


class CutNats(_Cut):
    variable = "INVO_NATS_URL"
    server = "nats"


def by_name(name: str) -> Fault:
    """`kill-<process>`, `kill-nats`, `freeze-postgres`, `cut-postgres:<service>`, `cut-nats:<service>`."""
    if name == "kill-nats":
        return KillNats()
    if name == "freeze-postgres":
        return FreezePostgres()
    if name.startswith("kill-"):
        return Kill(name.removeprefix("kill-"))
    if name.startswith("cut-postgres:"):
        return CutPostgres(name.partition(":")[2])
    if name.startswith("cut-nats:"):
        return CutNats(name.partition(":")[2])
    raise ValueError(f"no fault named {name!r}")


# The full suite, in order: each service, the gateway, the simulators, NATS; the database frozen;
# then the proxies (last: they restart a service to put it behind the proxy).
FULL = (
    *(f"kill-{s}" for s in SERVICES),
    "kill-gateway",
    "kill-processor_sim",
    "kill-ach_sim",
    "kill-nats",
    "freeze-postgres",
    "cut-postgres:ledger",
    "cut-nats:webhooks",
)
SHORT = ("kill-ledger", "kill-payments")
