"""The dev network's command line: `make run`, `make up`, `make down`, `make migrate`.

`python -m services.common.stack run|up|down|migrate` lands here (through `stack.main`). `run`
supervises a `Stack` in the foreground and prints the banner; `up` starts `run --detached` in the
background and waits for `.invo/dev.env`; `down` stops it by the pid files it left; `migrate`
applies every service's migrations to `INVO_DATABASE_URL` or the embedded server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from services.common import devservers
from services.common.config import SERVICES, Settings
from services.common.service import migrate_all
from services.common.stack import (
    DEMO_TENANT,
    READY_TIMEOUT_S,
    ROOT,
    Stack,
    StackError,
    _write_private,
    default_home,
)


def _banner(stack: Stack) -> str:
    env = stack.dev_env()
    key = env["INVO_DEMO_SDK_KEY"]
    lines = [
        "",
        "INVO Network is up.",
        f"  gateway        {stack.gateway_url}   (OpenAPI: {stack.gateway_url}/openapi.json)",
        f"  demo tenant    {env['INVO_DEMO_TENANT_ID']} (sandbox, {DEMO_TENANT['currency_name']!r})",
        f"  demo SDK key   {key}",
        f"  admin token    {env['INVO_ADMIN_TOKEN']}",
        "",
        "Try:",
        f'  curl -H "X-Game-Secret-Key: {key}" {stack.gateway_url}/api/tenant',
        "",
        "gRPC services: " + ", ".join(f"{n} {env[f'INVO_{n.upper()}_ADDR']}" for n in SERVICES),
        f"Card processor: {env['INVO_PROCESSOR_API_BASE']}"
        + (" (the simulator; test cards such as pm_card_visa)" if stack.use_simulator else ""),
        f"Logs: {stack.logs}/<service>.log",
    ]
    return "\n".join(lines)


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_ours(pid: int, home: pathlib.Path) -> bool:
    """Does `pid` still belong to this network? (A pid from a file may have been reused.)"""
    proc = pathlib.Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        environ = (proc / "environ").read_bytes().split(b"\0")
        cwd = os.readlink(proc / "cwd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if str(home) in cmdline or f"INVO_HOME={home}".encode() in environ:
        return True
    return cwd == str(ROOT) and "services." in cmdline


def _running_pid(home: pathlib.Path) -> int | None:
    path = home / "stack.pid"
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    return pid if _pid_alive(pid) and _is_ours(pid, home) else None


def cmd_run(home: pathlib.Path, *, detached: bool) -> int:
    if _running_pid(home) is not None:
        print(
            f"INVO Network is already running (see {home / 'dev.env'}); `make down` stops it.",
            file=sys.stderr,
        )
        return 1
    stop = {"requested": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack = Stack(home)
    _write_private(home / "stack.pid", str(os.getpid()))
    code = 0
    try:
        print("Starting PostgreSQL, NATS JetStream and the INVO services...", flush=True)
        stack.start()
        _write_private(home / "pids.json", json.dumps(stack.pids()))
        print(_banner(stack), flush=True)
        # Last, and atomically: `make up` takes dev.env appearing as "the network is ready".
        _write_private(home / "dev.env", "".join(f"{k}={v}\n" for k, v in stack.dev_env().items()))
        if not detached:
            print("\nCtrl-C stops everything.", flush=True)
        while not stop["requested"]:
            dead = stack.dead()
            if dead:
                for name, rc in dead:
                    print(f"\nservice {name} died (exit code {rc}); last lines of its log:", file=sys.stderr)
                    print(stack.log_tail(name), file=sys.stderr)
                code = 1
                break
            time.sleep(0.5)
    except (StackError, devservers.ServerError, OSError) as exc:
        print(f"\nINVO Network failed to start: {exc}", file=sys.stderr)
        code = 1
    finally:
        print("Stopping...", flush=True)
        stack.stop()
        for name in ("dev.env", "stack.pid", "pids.json"):
            with contextlib.suppress(FileNotFoundError):
                (home / name).unlink()
        print("Stopped.", flush=True)
    return code


def cmd_up(home: pathlib.Path) -> int:
    if _running_pid(home) is not None:
        print((home / "dev.env").read_text() if (home / "dev.env").exists() else "already starting")
        return 0
    home.mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    # Left behind by a supervisor that was killed: they describe a network that is gone.
    for stale in ("dev.env", "pids.json", "stack.pid"):
        with contextlib.suppress(FileNotFoundError):
            (home / stale).unlink()
    log_path = home / "logs" / "stack.log"
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.common.stack", "run", "--detached"],
            cwd=ROOT,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `make up`
            env={**os.environ, "INVO_HOME": str(home)},
        )
    deadline = time.monotonic() + READY_TIMEOUT_S + 60
    while time.monotonic() < deadline:
        if (home / "dev.env").exists():
            with open(log_path, "rb") as f:
                f.seek(log_offset)
                text = f.read().decode(errors="replace")
            print(text[text.find("INVO Network is up.") :].strip())
            print(f"\nRunning in the background; settings in {home / 'dev.env'}; `make down` stops it.")
            return 0
        if proc.poll() is not None:
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            return 1
        time.sleep(0.2)
    print("INVO Network did not come up in time; see .invo/logs/stack.log", file=sys.stderr)
    devservers.stop_process(proc)
    return 1


def cmd_down(home: pathlib.Path) -> int:
    pid = _running_pid(home)
    if pid is None:
        print("INVO Network is not running.")
        return 0
    children: list[int] = []
    with contextlib.suppress(FileNotFoundError, ValueError):
        children = json.loads((home / "pids.json").read_text())
    children = [c for c in children if _pid_alive(c) and _is_ours(c, home)]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_pid_alive(p) for p in [pid, *children]):
        time.sleep(0.1)
    left = [p for p in [pid, *children] if _pid_alive(p)]
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    print("INVO Network stopped." if not left else f"killed stragglers: {left}")
    return 0


def cmd_migrate(home: pathlib.Path) -> int:
    env = dict(os.environ)
    stack: Stack | None = None
    if not env.get("INVO_DATABASE_URL"):
        if (home / "dev.env").exists() and _running_pid(home) is not None:
            for line in (home / "dev.env").read_text().splitlines():
                k, _, v = line.partition("=")
                if k == "INVO_DATABASE_URL":
                    env[k] = v
        else:
            stack = Stack(home)
            home.mkdir(parents=True, exist_ok=True)
            stack.logs.mkdir(exist_ok=True)
            env["INVO_DATABASE_URL"] = stack._database_url(stack._secrets()["pg_password"])
    try:
        applied = asyncio.run(migrate_all(Settings.from_env(env)))
    finally:
        if stack is not None:
            stack.stop()
    for name, count in applied.items():
        print(f"{name}: {count} migration(s) applied")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.stack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="start everything in the foreground")
    run.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("up", help="start everything in the background")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("migrate", help="apply every service's migrations")
    args = parser.parse_args(argv)
    home = default_home()
    if args.cmd == "run":
        return cmd_run(home, detached=args.detached)
    if args.cmd == "up":
        return cmd_up(home)
    if args.cmd == "down":
        return cmd_down(home)
    return cmd_migrate(home)
