"""The dev network's supervisor: per-process environment overrides, restarts, crash loops.

`make run` should behave as Kubernetes will: a process that dies is restarted with capped
backoff and reported with the end of its log; the network stops only on a signal or a crash loop.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.devservers import free_port, grpc_serving, http_json
from devstack.stack import PYTHON_ENV, CrashLoop, Stack, StackError

# -- per-process environment (no network needed) ------------------------------------------------


def test_process_env_applies_to_one_process_only(tmp_path: pathlib.Path) -> None:
    stack = Stack(tmp_path, env={}, process_env={"ledger": {"INVO_DATABASE_URL": "postgresql://proxy/invo"}})
    stack.env = {"INVO_DATABASE_URL": "postgresql://direct/invo", "INVO_HOME": str(tmp_path)}

    assert stack.env_for("ledger") == {
        "PYTHONFAULTHANDLER": "1",  # every process: a native crash leaves its threads' tracebacks
        "INVO_DATABASE_URL": "postgresql://proxy/invo",
        "INVO_HOME": str(tmp_path),
    }
    assert stack.env_for("payments") == {**PYTHON_ENV, **stack.env}
    assert stack.env["INVO_DATABASE_URL"] == "postgresql://direct/invo"  # the shared env is untouched

    stack.set_process_env("ledger", {"INVO_NATS_URL": "nats://proxy:1"})  # replaces, for the next spawn
    assert stack.env_for("ledger")["INVO_DATABASE_URL"] == "postgresql://direct/invo"
    assert stack.env_for("ledger")["INVO_NATS_URL"] == "nats://proxy:1"
    stack.set_process_env("ledger", {})
    assert stack.env_for("ledger") == {**PYTHON_ENV, **stack.env}


def test_process_env_refuses_unknown_names_and_values(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StackError, match="no process named"):
        Stack(tmp_path, env={}, process_env={"ledgr": {"A": "1"}})
    stack = Stack(tmp_path, env={})
    with pytest.raises(StackError, match="str to str"):
        stack.set_process_env("ledger", {"A": 1})  # type: ignore[dict-item]


# -- a real network, supervised in-process by watch_once -----------------------------------------
#
# One Stack for the module (each start is 10-20 s); the crash loop ends it, so it runs last.

WATCH_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {k: v for k, v in os.environ.items() if k not in ("INVO_DATABASE_URL", "INVO_NATS_URL")}
    env["INVO_GATEWAY_PORT"] = str(free_port())  # not the session's port: both may run at once
    stack = Stack(tmp_path_factory.mktemp("supervised"), env=env, durable=False)
    stack.start()
    yield stack
    stack.stop()


def _watch_until(stack: Stack, done: Callable[[list[str]], bool], *, what: str) -> list[str]:
    """Run watch_once as `make run` does until `done(report so far)`; the report."""
    report: list[str] = []
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    while not done(report):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WATCH_TIMEOUT_S}s; report:\n" + "\n".join(report))
        report += stack.watch_once()
        time.sleep(0.1)
    return report


@contextlib.contextmanager
def _hold_port(port: int) -> Iterator[None]:
    """Listen on 127.0.0.1:`port` as soon as the killed server has let go of it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                sock.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        sock.listen()
        yield


def _gateway(stack: Stack, method: str, path: str, body: Any = None) -> int:
    try:
        status, _ = http_json(method, stack.gateway_url + path, headers=stack.admin_headers(), body=body, timeout_s=5)
    except OSError:
        return 0
    return status


def test_a_killed_service_is_restarted_and_reported(supervised: Stack) -> None:
    stack = supervised
    # Stopped on purpose: the supervisor must leave it stopped while it restarts the ledger.
    stack.stop_process("ach_sim")
    old_pid = stack.procs["ledger"].pid

    os.kill(old_pid, signal.SIGKILL)
    report = _watch_until(stack, lambda r: any("ledger is serving again" in line for line in r), what="ledger back")

    died = [i for i, line in enumerate(report) if line.startswith("ledger died (exit code -9)")]
    assert len(died) == 1, report
    tail = list(itertools.takewhile(lambda line: line.startswith("  | "), report[died[0] + 1 :]))
    assert tail and any('"service": "ledger"' in line for line in tail), report  # the end of its own log
    assert any(line.startswith("ledger restarted (pid ") for line in report), report
    assert stack.procs["ledger"].pid != old_pid and stack.procs["ledger"].poll() is None
    assert grpc_serving(stack.env["INVO_LEDGER_ADDR"], 2.0)
    assert _gateway(stack, "GET", "/readyz") == 200
    assert "ach_sim" not in stack.procs and not any("ach_sim" in line for line in report), report
    stack.start_process("ach_sim")


def test_killed_nats_comes_back_on_its_port(supervised: Stack) -> None:
    stack = supervised
    assert stack.nats is not None and stack.nats.proc is not None
    port = stack.nats.port

    os.kill(stack.nats.proc.pid, signal.SIGKILL)
    report = _watch_until(stack, lambda r: any(line.startswith("nats restarted") for line in r), what="nats back")

    assert any(line.startswith("nats died (exit code -9)") for line in report), report
    assert stack.nats.port == port and stack.env["INVO_NATS_URL"].endswith(f":{port}")
    _watch_until(stack, lambda r: _gateway(stack, "GET", "/readyz") == 200, what="/readyz 200 after nats")


def test_killed_postgres_comes_back_and_serves(supervised: Stack) -> None:
    stack = supervised
    assert stack.postgres is not None and stack.postgres.proc is not None
    port = stack.postgres.port

    os.kill(stack.postgres.proc.pid, signal.SIGKILL)  # the postmaster; its backends are orphaned
    # Someone else takes its port for a while: the first restart fails, counts as a death, and
    # is tried again after the backoff, on the same port once it is free.
    with _hold_port(port):
        report = _watch_until(stack, lambda r: any("postgres did not restart" in line for line in r), what="refused")
    report += _watch_until(stack, lambda r: any(line.startswith("postgres restarted") for line in r), what="pg back")

    assert any(line.startswith("postgres died (exit code -9)") for line in report), report
    assert any(line.startswith("postgres died (failed to start)") for line in report), report
    assert stack.postgres.port == port
    # The services' pools reconnect (or the service dies and is restarted): a write goes through.
    tenant = {"name": "After PG", "currency_name": "Coins", "environment": "sandbox"}
    _watch_until(stack, lambda r: _gateway(stack, "POST", "/admin/tenants", tenant) == 201, what="a write after pg")
    _watch_until(stack, lambda r: _gateway(stack, "GET", "/readyz") == 200, what="/readyz 200 after pg")


def test_a_crash_loop_raises_without_blocking_the_watch(supervised: Stack) -> None:
    stack = supervised
    # A broken setting for one process only: it dies at start-up, every time.
    stack.set_process_env("transfers", {"INVO_RPC_TIMEOUT_S": "not-a-number"})
    assert "INVO_RPC_TIMEOUT_S" not in stack.env
    os.kill(stack.procs["transfers"].pid, signal.SIGKILL)

    report: list[str] = []
    slowest_s = 0.0
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    with pytest.raises(CrashLoop) as caught:
        while time.monotonic() < deadline:
            began = time.monotonic()
            report += stack.watch_once()
            slowest_s = max(slowest_s, time.monotonic() - began)
            time.sleep(0.1)
    assert caught.value.name == "transfers" and caught.value.deaths == 5, report
    assert "INVO_RPC_TIMEOUT_S" in caught.value.log_tail, caught.value.log_tail
    assert "transfers is crash-looping" in str(caught.value)
    # Backoff 0.5, 1, 2, 4 s between the five deaths, yet no round waited for one.
    delays = [line.split("restarting it in ")[1].split(" s")[0] for line in report if "restarting it in" in line]
    assert delays == ["0.5", "1", "2", "4"], report
    assert slowest_s < 2.0, slowest_s
    # The other processes were left alone.
    assert stack.procs["ledger"].poll() is None and stack.procs["gateway"].poll() is None
