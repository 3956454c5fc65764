"""`make up` / `make down` end to end, the path a new user takes.

Drives the real command line (`python -m devstack.stack up|down`) with a data directory of
its own (`INVO_HOME`), so it starts its own PostgreSQL and NATS, and checks what a user sees: the
banner, `dev.env`, a working gateway, idempotent `up`, a `down` that leaves no process behind, data
that survives a restart; and `run` in the foreground, which restarts a service that dies, names
it with its log tail, and stops everything when one crash-loops.

Every process of one network carries `INVO_HOME=<home>` in its environment (the supervisor, the
services, postgres, nats-server), and postgres / nats-server name `<home>` on their command line,
so a scan of /proc finds whatever is left of a network, whoever its parent is.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from devstack.devservers import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
UP_TIMEOUT_S = 180.0  # `up` itself gives up after READY_TIMEOUT_S + 60
DOWN_TIMEOUT_S = 90.0  # `down` itself gives up after 60 s, then SIGKILLs
EXIT_TIMEOUT_S = 60.0
DEV_ENV_KEYS = {
    "INVO_GATEWAY_URL",
    "INVO_ADMIN_TOKEN",
    "INVO_DEMO_SDK_KEY",
    "INVO_DEMO_TENANT_ID",
    "INVO_DATABASE_URL",
    "INVO_NATS_URL",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pathlib.Path("/proc/self/cmdline").exists(), reason="needs Linux /proc"),
]


# -- helpers -----------------------------------------------------------------------------------


def _env(home: pathlib.Path, gateway_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("INVO_DATABASE_URL", "INVO_NATS_URL")}
    env["INVO_HOME"] = str(home)
    env["INVO_GATEWAY_PORT"] = str(gateway_port)
    return env


def _cli(env: dict[str, str], command: str, *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.stack", command],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _cli(env, "up", timeout_s=UP_TIMEOUT_S)


def _down(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _cli(env, "down", timeout_s=DOWN_TIMEOUT_S)


def _read_dev_env(home: pathlib.Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (home / "dev.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _get_tenant(gateway_url: str, sdk_key: str) -> tuple[int, Any]:
    req = urllib.request.Request(gateway_url + "/api/tenant", headers={"X-Game-Secret-Key": sdk_key})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


def _wait_until(check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.1)


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc/<pid>/stat, or None if there is no such process."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0]


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _proc_state(pid) in (None, "Z")  # a zombie has exited; only its exit status is left


def _network_processes(home: pathlib.Path) -> dict[int, str]:
    """Every live process (not a zombie) of the network that lives in `home`: pid -> command line."""
    home_s = str(home)
    env_entry = f"INVO_HOME={home_s}".encode()
    found: dict[int, str] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        mine = any(a == home_s or a.startswith(home_s + os.sep) for a in argv)
        if not mine:
            with contextlib.suppress(OSError):  # kernel threads, other users' processes
                mine = env_entry in (entry / "environ").read_bytes().split(b"\0")
        if mine and _proc_state(pid) not in (None, "Z"):
            found[pid] = " ".join(argv)
    return found


def _started_pids(home: pathlib.Path) -> list[int]:
    """The supervisor's pid and every pid it recorded in pids.json."""
    supervisor = int((home / "stack.pid").read_text().strip())
    children = json.loads((home / "pids.json").read_text())
    assert isinstance(children, list) and children, children
    return [supervisor, *(int(p) for p in children)]


def _assert_nothing_left(home: pathlib.Path, pids: list[int]) -> None:
    alive = [p for p in pids if not _pid_gone(p)]
    assert not alive, f"still running after the network stopped: {alive}"
    left = _network_processes(home)
    assert not left, f"processes of {home} still running: {left}"


def _cleanup(env: dict[str, str], home: pathlib.Path) -> None:
    """Best effort, for a failed test: `down`, then SIGKILL whatever of this network is left."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        _down(env)
    for pid in _network_processes(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(AssertionError):
        _wait_until(lambda: not _network_processes(home), timeout_s=10, what="leftovers killed")


def _start(env: dict[str, str], home: pathlib.Path) -> tuple[dict[str, str], list[int]]:
    """`up`, checked as a user sees it; returns dev.env and the pids the network runs as."""
    up = _up(env)
    assert up.returncode == 0, f"up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}"
    dev = _read_dev_env(home)
    assert set(dev) >= DEV_ENV_KEYS, dev
    assert all(dev[k] for k in DEV_ENV_KEYS), dev
    for key in ("INVO_GATEWAY_URL", "INVO_DEMO_SDK_KEY", "INVO_ADMIN_TOKEN", "INVO_DEMO_TENANT_ID"):
        assert dev[key] in up.stdout, f"`up` did not print {key}={dev[key]}:\n{up.stdout}"
    assert dev["INVO_DATABASE_URL"].startswith("postgresql://"), dev
    assert dev["INVO_NATS_URL"].startswith("nats://"), dev
    # pids.json is written by the supervisor next to dev.env; give it a moment to be there.
    _wait_until(lambda: (home / "pids.json").exists(), timeout_s=10, what="pids.json written")
    pids = _started_pids(home)
    assert all(not _pid_gone(p) for p in pids), pids
    return dev, pids


def _assert_tenant_served(dev: dict[str, str]) -> None:
    status, body = _get_tenant(dev["INVO_GATEWAY_URL"], dev["INVO_DEMO_SDK_KEY"])
    assert status == 200, (status, body)
    assert body["tenant_id"] == dev["INVO_DEMO_TENANT_ID"], body


# -- tests -------------------------------------------------------------------------------------


def test_up_down_restart(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "invo-home"
    port = free_port()
    env = _env(home, port)
    try:
        # 1. `up` starts everything and tells the user how to reach it.
        dev, pids = _start(env, home)
        assert dev["INVO_GATEWAY_URL"] == f"http://127.0.0.1:{port}", dev
        network = _network_processes(home)
        assert set(pids) <= set(network), (pids, network)
        assert any(f"{home / 'pg'}" in cmd for cmd in network.values()), network
        assert any(f"{home / 'nats.conf'}" in cmd for cmd in network.values()), network

        # 2. The gateway answers for the demo tenant: gateway -> tenants (gRPC) -> PostgreSQL.
        _assert_tenant_served(dev)

        # 3. `up` again while it runs: no second network.
        dev_text = (home / "dev.env").read_text()
        stack_pid = (home / "stack.pid").read_text()
        again = _up(env)
        assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
        assert (home / "dev.env").read_text() == dev_text
        assert (home / "stack.pid").read_text() == stack_pid
        assert set(_network_processes(home)) == set(network), "a second `up` started processes"
        assert all(not _pid_gone(p) for p in pids), pids
        _assert_tenant_served(dev)

        # 4. `down` stops every process `up` started and removes the run files.
        down = _down(env)
        assert down.returncode == 0, f"{down.stdout}\n{down.stderr}"
        _assert_nothing_left(home, pids)
        for name in ("dev.env", "stack.pid", "pids.json"):
            assert not (home / name).exists(), name

        # 5. Data survives a restart: the same demo tenant and key still work.
        dev2, pids2 = _start(env, home)
        assert dev2["INVO_DEMO_TENANT_ID"] == dev["INVO_DEMO_TENANT_ID"], (dev, dev2)
        assert dev2["INVO_DEMO_SDK_KEY"] == dev["INVO_DEMO_SDK_KEY"], (dev, dev2)
        assert dev2["INVO_ADMIN_TOKEN"] == dev["INVO_ADMIN_TOKEN"], (dev, dev2)
        _assert_tenant_served(dev2)
        down = _down(env)
        assert down.returncode == 0, f"{down.stdout}\n{down.stderr}"
        _assert_nothing_left(home, pids2)
        assert not (home / "dev.env").exists()
        assert not (home / "stack.pid").exists()
    finally:
        _cleanup(env, home)


def _service_pids(home: pathlib.Path, service: str) -> set[int]:
    return {pid for pid, cmd in _network_processes(home).items() if f"-m services.{service}" in cmd}


def _readyz(gateway_url: str) -> int:
    try:
        with urllib.request.urlopen(gateway_url + "/readyz", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code
    except OSError:
        return 0


def test_run_restarts_a_dead_service_and_stops_on_a_crash_loop(tmp_path: pathlib.Path) -> None:
    """`make run` in the foreground: a killed service comes back and is reported with its log
    tail; one that keeps dying (5 deaths within 60 s) stops the network with exit code 1."""
    home = tmp_path / "invo-home"
    env = _env(home, free_port())
    out_path = tmp_path / "terminal.txt"  # what the developer's terminal shows
    with open(out_path, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "devstack.stack", "run"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def terminal() -> str:
        return out_path.read_text(errors="replace")

    try:
        _wait_until(
            lambda: ((home / "pids.json").exists() and (home / "dev.env").exists()) or run.poll() is not None,
            timeout_s=UP_TIMEOUT_S,
            what="the network up",
        )
        assert run.poll() is None, terminal()
        dev = _read_dev_env(home)
        # The foreground banner shows the demo key and the admin token, as the README promises.
        assert dev["INVO_DEMO_SDK_KEY"] in terminal() and dev["INVO_ADMIN_TOKEN"] in terminal(), terminal()
        pids = _started_pids(home)
        (first,) = _service_pids(home, "ledger")

        os.kill(first, signal.SIGKILL)

        _wait_until(lambda: "ledger is serving again" in terminal(), timeout_s=EXIT_TIMEOUT_S, what="ledger back")
        text = terminal()
        assert "ledger died (exit code -9)" in text, text
        assert '  | {"ts": ' in text.split("ledger died (exit code -9)", 1)[1], text  # its log tail
        (second,) = _service_pids(home, "ledger")
        assert second != first
        assert second in json.loads((home / "pids.json").read_text()), "pids.json must name it for `down`"
        assert _readyz(dev["INVO_GATEWAY_URL"]) == 200
        _assert_tenant_served(dev)

        # Keep killing it: the fifth death within a minute is a crash loop, and that stops all.
        killed = {first}
        deadline = time.monotonic() + 2 * EXIT_TIMEOUT_S
        while run.poll() is None and time.monotonic() < deadline:
            for pid in _service_pids(home, "ledger") - killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        assert run.wait(EXIT_TIMEOUT_S) == 1, terminal()
        assert len(killed) == 5, (killed, terminal())
        assert "ledger is crash-looping (5 deaths within 60 s)" in terminal(), terminal()
        _assert_nothing_left(home, pids)
        assert not (home / "dev.env").exists()
        assert not (home / "stack.pid").exists()
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.wait(EXIT_TIMEOUT_S)
        _cleanup(env, home)
