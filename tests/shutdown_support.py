"""What the shutdown and stall tests share.

- A small service program, run as `python -m tests.shutdown_support MODE ADDR`: a `GrpcService`
  (the real one every service runs on, run through `runtime.run` as `service.main` does, with no
  database) whose background task or clean-up misbehaves in the way MODE names.
- `ServiceProcess`: a process of the test's own (the test program, or a real service such as
  `python -m services.webhooks` with the session network's addresses) with its log in a file.
- `FreezableProxy`: a TCP proxy that can freeze, forwarding nothing and closing nothing, as a
  server stopped with SIGSTOP looks from its clients (the kernel still accepts connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import nats
from nats.js.errors import NotFoundError

from devstack import devservers
from devstack.stack import Stack
from services.common import db, grpcserver, grpcutil, logs, loops, runtime

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAM_GRACE_S = 0.2  # the test program's gRPC grace: its stops are quick unless made stuck
PROGRAM_LOGGER = "test.shutdown"

# -- the test program -----------------------------------------------------------------------------

MODES = ("clean", "swallow", "ignore", "die", "stuck-cleanup", "block")


async def _quiet_round() -> float:
    """A well-behaved round, as the webhooks sender's: wait on something, with a timeout."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), timeout=0.2)
    return 0.0


async def _swallowing_round() -> float:
    """A round that swallows its cancellation (as 3.11's `wait_for` can) and answers as usual."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass
    return 0.0


async def _ignores_cancellation() -> None:
    """Not a supervised loop: a task that survives every cancellation."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


async def _serve(mode: str, addr: str) -> None:
    log = logging.getLogger(PROGRAM_LOGGER)
    svc = grpcserver.GrpcService("shutdown-test", addr, shutdown_grace_s=PROGRAM_GRACE_S)
    svc.background(loops.supervised("quiet-loop", _quiet_round, interval_s=0.0, log=log), "quiet-loop")
    if mode == "swallow":
        svc.background(loops.supervised("swallowing-loop", _swallowing_round, interval_s=0, log=log), "swallowing-loop")
    elif mode == "ignore":
        svc.background(_ignores_cancellation(), "stubborn-task")
    elif mode == "die":

        async def die() -> None:
            await svc.serving.wait()
            raise RuntimeError("the loop broke")

        svc.background(die(), "dying-task")
    elif mode == "stuck-cleanup":
        svc.on_shutdown(_ignores_cancellation)
    elif mode == "block":

        async def block() -> None:
            await svc.serving.wait()
            log.info("blocking the loop")
            time.sleep(3600)  # synchronous: the event loop never runs again

        svc.background(block(), "blocking-task")
    await svc.run()


def program(argv: list[str]) -> int:
    mode, addr = argv
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {', '.join(MODES)}")
    logs.setup("shutdown-test", "INFO")
    return runtime.run(_serve(mode, addr))


# -- a process of the test's own ------------------------------------------------------------------


class ServiceProcess:
    """One process started by a test, its output in `log_path`; `kill()` ends it if still alive."""

    def __init__(self, argv: list[str], *, env: Mapping[str, str], log_path: pathlib.Path) -> None:
        self.log_path = log_path
        self.signalled_at = 0.0
        with open(log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                devservers.with_parent([sys.executable, *argv]),
                cwd=ROOT,
                env=dict(env),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def entries(self) -> list[dict[str, Any]]:
        """Its JSON log lines so far (a line being written, or not JSON, is skipped)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
        return found

    def logged(self, text: str) -> bool:
        return any(text in str(e.get("msg", "")) for e in self.entries())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM, noting when (so that the test can measure how long the stop took)."""
        self.signalled_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def program_process(mode: str, log_path: pathlib.Path) -> tuple[ServiceProcess, str]:
    """The test program in `mode` on a free port; the process and its gRPC address."""
    addr = f"127.0.0.1:{devservers.free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVO_")}
    return ServiceProcess(["-m", "tests.shutdown_support", mode, addr], env=env, log_path=log_path), addr


def wait_until(check: Any, *, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Polls `check()` until it is true (True) or `timeout_s` has passed (False): for the tests
    that have no event loop to wait in."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


# -- a webhooks service of the test's own ---------------------------------------------------------

OWN_GRACE_S = 1.0  # its gRPC grace, so that a test of its stop does not wait out the default 5 s
READY_TIMEOUT_S = 60.0


@dataclasses.dataclass
class OwnWebhooks:
    """`python -m services.webhooks` beside the session network's: the same tenants service, but
    its own schema, stream, subject prefix and durable consumer, so that it sees only the events
    the test publishes on its stream (and the network's webhooks service never sees those)."""

    process: ServiceProcess
    addr: str
    direct_database_url: str  # PostgreSQL itself, whatever the service was given
    schema: str
    stream: str
    subject_prefix: str
    nats_url: str

    def stop_budget_s(self) -> float:
        """Its graceful stop's bound (grpcserver.GrpcService.stop_budget_s with its 4 clean-ups:
        the tenants channel, the sender, NATS and the pool)."""
        return OWN_GRACE_S + grpcserver.CLEANUP_S + grpcserver.BACKGROUND_STOP_S + 4 * grpcserver.CLEANUP_S


async def start_own_webhooks(stack: Stack, log_path: pathlib.Path, *, database_url: str = "") -> OwnWebhooks:
    """Starts it (with `database_url` instead of the network's, a proxy say) and waits until it
    serves; `remove_own_webhooks` ends it and drops what it made."""
    token = secrets.token_hex(4)
    addr = f"127.0.0.1:{devservers.free_port()}"
    env = {
        **stack.env,
        "INVO_DATABASE_URL": database_url or stack.env["INVO_DATABASE_URL"],
        "INVO_DB_SCHEMA_PREFIX": f"own{token}_",
        "INVO_NATS_STREAM": f"OWN_{token.upper()}",
        "INVO_NATS_SUBJECT_PREFIX": f"own_{token}.events",
        "INVO_WEBHOOK_CONSUMER": f"own-{token}",
        "INVO_WEBHOOKS_ADDR": addr,
        "INVO_GRPC_SHUTDOWN_GRACE_S": str(OWN_GRACE_S),
    }
    env.pop("INVO_GRPC_LISTEN", None)
    own = OwnWebhooks(
        process=ServiceProcess(["-m", "services.webhooks"], env=env, log_path=log_path),
        addr=addr,
        direct_database_url=stack.env["INVO_DATABASE_URL"],
        schema=f"own{token}_webhooks",
        stream=env["INVO_NATS_STREAM"],
        subject_prefix=env["INVO_NATS_SUBJECT_PREFIX"],
        nats_url=stack.env["INVO_NATS_URL"],
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await grpcutil.check_health(addr, timeout_s=1.0):
        if not own.process.alive() or time.monotonic() > deadline:
            own.process.kill()
            raise AssertionError(f"the test's webhooks service did not start:\n{own.process.tail()}")
        await asyncio.sleep(0.05)
    return own


async def remove_own_webhooks(own: OwnWebhooks) -> None:
    own.process.kill()
    await db.drop_schema(own.direct_database_url, own.schema)
    nc = await nats.connect(own.nats_url, connect_timeout=5)
    try:
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_stream(own.stream)
    finally:
        await nc.close()


async def exited_within(process: ServiceProcess, timeout_s: float) -> float:
    """Waits (without blocking the loop: a proxy may run in it) until the process has exited,
    at most `timeout_s` after its SIGTERM; how long after the SIGTERM it exited."""
    deadline = process.signalled_at + timeout_s
    while process.alive():
        if time.monotonic() > deadline:
            raise AssertionError(f"still alive {timeout_s:.1f} s after SIGTERM:\n{process.tail()}")
        await asyncio.sleep(0.02)
    return time.monotonic() - process.signalled_at


# -- a proxy that freezes -------------------------------------------------------------------------


class FreezableProxy:
    """A TCP proxy on a free loopback port in front of `target`. `freeze()` stops it forwarding in
    both directions and connecting new clients (they are accepted and wait), closing nothing;
    `thaw()` goes on where it stopped. Bytes read just as the freeze began are held, not lost."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[None]] = set()
        self.held = 0  # reads held back by a freeze: how a test knows a query is stuck in it
        self.closing = False

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
        self.writers.add(writer)
        try:
            await self.flowing.wait()
            if self.closing:
                return
            with contextlib.suppress(OSError):
                up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
                self.writers.add(up_writer)
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            writer.close()
            if task is not None:
                self.handlers.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if not self.flowing.is_set():
                    self.held += 1
                    await self.flowing.wait()
                if self.closing:
                    break
                dst.write(data)
                await dst.drain()
        dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        # Never cancelled (asyncio reports a cancelled connection handler as an error): told to
        # stop, let go by the thaw, and cut off from their sockets, every handler returns.
        self.closing = True
        self.thaw()
        for w in self.writers:
            w.close()
        await asyncio.wait_for(asyncio.gather(*self.handlers, return_exceptions=True), timeout=5)
        for w in self.writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()
        self.writers.clear()


if __name__ == "__main__":
    raise SystemExit(program(sys.argv[1:]))
